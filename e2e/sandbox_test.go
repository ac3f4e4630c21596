package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBuildsSandboxed: the built-in worker never builds unsandboxed, in
// its default chroot store and in the machine's own store (--local-store
// auto, the store root's nix-store builds in itself), although this
// machine's nix.conf says sandbox = false. A build tries to write to the
// host's /tmp, to find the farm's command line in /proc and to reach the
// farm's SSH and HTTP ports on 127.0.0.1: none of it may work.
func TestBuildsSandboxed(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"worker-store", nil},
		{"machine-store", []string{"--local-store", "auto"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFarm(t, tc.args...)
			if !strings.Contains(f.logs(), `msg="built-in worker: sandbox on"`) {
				t.Errorf("the farm did not say the built-in worker builds sandboxed:\n%s", f.logs())
			}
			apiPort := f.apiURL[strings.LastIndex(f.apiURL, ":")+1:]
			apiPort = strings.TrimRight(apiPort, "/")
			nonce := strconv.FormatInt(time.Now().UnixNano(), 36)
			marker := "/tmp/nixfarm-sandbox-" + nonce
			t.Cleanup(func() { os.Remove(marker) })
			// The farm's own command line holds "--ssh-listen"; the script
			// spells it in two pieces so that it does not find itself.
			script := fmt.Sprintf(`busybox echo escaped > %s 2>/dev/null
r=""
if (busybox printf "" | busybox nc -w 3 127.0.0.1 %s 2>/dev/null | busybox head -c 7 | busybox grep -q SSH-2.0); then r="$r ssh-reached"; fi
if (busybox printf "GET / HTTP/1.0\r\n\r\n" | busybox nc -w 3 127.0.0.1 %s 2>/dev/null | busybox grep -q HTTP/); then r="$r http-reached"; fi
n=0
for c in /proc/[0-9]*/cmdline; do if busybox grep -q -e "--ssh-lis""ten" "$c" 2>/dev/null; then n=$((n+1)); fi; done
echo "reached:$r farm-processes:$n" > $out
`, marker, f.port, apiPort)
			c := newClient(t)
			file := c.expr("sandbox", fmt.Sprintf(`mk { name = "sandbox-%s"; args = ["-c" %q]; }`, nonce, script))
			r := c.build(f, "ssh-ng", file)
			if r.err != nil {
				t.Fatalf("the build failed: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
			}
			out := strings.TrimSpace(r.out)
			if got := strings.TrimSpace(c.read(out)); got != "reached: farm-processes:0" {
				t.Errorf("from inside the build: %q, want %q", got, "reached: farm-processes:0")
			}
			if _, err := os.Stat(marker); err == nil {
				t.Errorf("the build wrote %s on the host", marker)
			}
		})
	}
}
