package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// (a) The builder is busybox from the client's store, so the client must
// upload it before the farm can build.
func TestUploadedInput(t *testing.T) { forClientsAndSchemes(t, testUploadedInput) }

func testUploadedInput(t *testing.T, v *nixVersion, scheme string) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("hello", `mk { name = "hello"; args = ["-c" "echo saying hello; echo hello from the farm > $out"]; }`)
	outs := c.mustBuild(f, scheme, file)
	if log := c.nixLog(c.instantiate(file)[0]); log != "saying hello\n" {
		t.Errorf("nix log shows %q", log)
	}
	if len(outs) != 1 {
		t.Fatalf("outputs: %v", outs)
	}
	if got := c.read(outs[0]); got != "hello from the farm\n" {
		t.Errorf("contents %q", got)
	}
	if refs := c.verify(outs[0]); len(refs) != 0 {
		t.Errorf("references %v, want none", refs)
	}
	// The farm logged which client connected, with the version and the
	// protocol features (1.38 on) it offered.
	want := fmt.Sprintf(`msg="client connected" account=alice version=%s protocol=serve client_version=%s`, v.serveVersion(), v.serveVersion())
	if scheme == "ssh-ng" {
		want = fmt.Sprintf(`msg="client connected" account=alice version=%s protocol=daemon client_version=%s client_features=[] features=[]`,
			v.daemonVersion(), v.daemonVersion())
	}
	if !strings.Contains(f.logs(), want) {
		t.Errorf("the farm did not log the client's connection as %s", want)
	}
	// The farm now holds the uploaded busybox.
	var n int
	if err := f.db().QueryRow(`SELECT count(*) FROM views WHERE path = ? AND account = 'alice'`, c.bb).Scan(&n); err != nil || n != 1 {
		t.Errorf("busybox %s not registered in the farm store for alice (n=%d, err=%v)", c.bb, n, err)
	}
}

// (b) A chain of three derivations, each referring to the one before.
func TestChain(t *testing.T) { forClientsAndSchemes(t, testChain) }

func testChain(t *testing.T, v *nixVersion, scheme string) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("chain", `
  let a = mk { name = "chain-a"; args = ["-c" "echo a > $out"]; };
      b = mk { name = "chain-b"; args = ["-c" "echo b ${a} > $out"]; };
  in mk { name = "chain-c"; args = ["-c" "echo c ${b} > $out"]; }`)
	outs := c.mustBuild(f, scheme, file)
	if len(outs) != 1 {
		t.Fatalf("outputs: %v", outs)
	}
	cOut := outs[0]
	text := c.read(cOut)
	fields := strings.Fields(text)
	if len(fields) != 2 || fields[0] != "c" {
		t.Fatalf("chain-c contents %q", text)
	}
	bOut := fields[1]
	if refs := c.verify(cOut); !slices.Equal(refs, []string{bOut}) {
		t.Errorf("chain-c references %v, want [%s]", refs, bOut)
	}
	bFields := strings.Fields(c.read(bOut))
	if len(bFields) != 2 || bFields[0] != "b" {
		t.Fatalf("chain-b contents %v", bFields)
	}
	if refs := c.verify(bOut); !slices.Equal(refs, []string{bFields[1]}) {
		t.Errorf("chain-b references %v, want [%s]", refs, bFields[1])
	}
	if got := c.read(bFields[1]); got != "a\n" {
		t.Errorf("chain-a contents %q", got)
	}
	c.verify(bFields[1])
}

// (c) Two outputs, dev referring to out, and out referring to busybox.
func TestMultiOutput(t *testing.T) { forClientsAndSchemes(t, testMultiOutput) }

func testMultiOutput(t *testing.T, v *nixVersion, scheme string) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("multi", `let d = mk {
    name = "multi"; outputs = [ "out" "dev" ];
    args = [ "-c" "mkdir -p $out/bin $dev; printf '#!${bb}/bin/sh\\necho tool\\n' > $out/bin/tool; echo $out > $dev/out-path" ];
  }; in [ d.out d.dev ]`)
	paths := c.mustBuild(f, scheme, file)
	if len(paths) != 2 {
		t.Fatalf("outputs %v", paths)
	}
	var out, dev string
	for _, p := range paths {
		if strings.HasSuffix(p, "-multi-dev") {
			dev = p
		} else {
			out = p
		}
	}
	if got := strings.TrimSpace(c.read(dev + "/out-path")); got != out {
		t.Errorf("dev/out-path = %q, want %q", got, out)
	}
	if refs := c.verify(dev); !slices.Equal(refs, []string{out}) {
		t.Errorf("dev references %v, want [%s]", refs, out)
	}
	if refs := c.verify(out); !slices.Equal(refs, []string{c.bb}) {
		t.Errorf("out references %v, want [%s]", refs, c.bb)
	}
	if got := c.read(out + "/bin/tool"); got != "#!"+c.bb+"/bin/sh\necho tool\n" {
		t.Errorf("tool script %q", got)
	}
}

// (d) An output of 64 MiB.
func TestLargeOutput(t *testing.T) { forClientsAndSchemes(t, testLargeOutput) }

func testLargeOutput(t *testing.T, v *nixVersion, scheme string) {
	f := startFarm(t)
	c := newClientOf(t, v)
	const size = 64 << 20
	file := c.expr("large", `mk { name = "large"; args = ["-c" "yes nixfarm-large-output | head -c 67108864 > $out"]; }`)
	outs := c.mustBuild(f, scheme, file)
	c.verify(outs[0])
	st, err := os.Stat(c.realPath(outs[0]))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size {
		t.Fatalf("size %d, want %d", st.Size(), size)
	}
	want := sha256.New()
	line := []byte("nixfarm-large-output\n")
	for n := 0; n < size; {
		k := min(len(line), size-n)
		want.Write(line[:k])
		n += k
	}
	got, err := fileSHA256(c.realPath(outs[0]))
	if err != nil {
		t.Fatal(err)
	}
	if got != hex.EncodeToString(want.Sum(nil)) {
		t.Errorf("content hash mismatch")
	}
}

func fileSHA256(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// (e) A failing build: Nix's normal error, with the log lines shown.
func TestFailingBuild(t *testing.T) { forClientsAndSchemes(t, testFailingBuild) }

func testFailingBuild(t *testing.T, v *nixVersion, scheme string) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("fail", `mk { name = "fail"; args = ["-c" "echo first-log-line; echo second-log-line >&2; exit 1"]; }`)
	r := c.build(f, scheme, file)
	if r.err == nil {
		t.Fatalf("build succeeded:\n%s", r.stderr)
	}
	if _, ok := r.err.(*exec.ExitError); !ok {
		t.Fatalf("nix-build: %v", r.err)
	}
	for _, want := range []string{"builder for '", "failed with exit code 1", "first-log-line", "second-log-line"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("client output lacks %q:\n%s", want, r.stderr)
		}
	}
	// The client kept the log: nix log shows both lines.
	log := c.nixLog(c.instantiate(file)[0])
	if !strings.Contains(log, "first-log-line\n") || !strings.Contains(log, "second-log-line\n") {
		t.Errorf("nix log shows:\n%s", log)
	}
}
