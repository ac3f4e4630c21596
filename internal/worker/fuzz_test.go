package worker_test

import (
	"encoding/base64"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/worker"
)

// renderMachine writes m as one machines-file entry.
func renderMachine(m worker.Machine) string {
	field := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	list := func(ss []string) string {
		s := strings.Join(ss, ",")
		if s == "" && len(ss) > 0 {
			return "," // [""]: a field of only commas
		}
		return field(s)
	}
	return strings.Join([]string{
		m.URI,
		list(m.Systems),
		field(m.SSHKey),
		strconv.Itoa(m.MaxJobs),
		strconv.FormatFloat(m.SpeedFactor, 'g', -1, 64),
		list(m.SupportedFeatures),
		list(m.MandatoryFeatures),
		field(m.HostKey),
	}, " ")
}

// FuzzParseMachines checks the machines-file parser: no panic, every
// machine it accepts is an ssh:// or ssh-ng:// one with a host that cannot
// be taken for an ssh option, sane job counts and speed factors (finite,
// at least 1), a base64 host key, no more machines than entries, and each
// machine written out again parses to the same machine. Inputs with
// "@file" includes are skipped: they read the fuzzer's file system.
func FuzzParseMachines(f *testing.F) {
	hostKey := base64.StdEncoding.EncodeToString([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINnN09injWZRbmW4qk783QcRXAqnUMKhLQ93Bv0G8Nz6\n"))
	for _, s := range []string{
		"builder",
		"ssh://nix@builder x86_64-linux,i686-linux /root/.ssh/id_ed25519 4 2 big-parallel,kvm - " + hostKey,
		"ssh-ng://b.example.org?remote-store=local&remote-program=/bin/nix-daemon aarch64-linux - 8 1.5 - benchmark",
		"# a comment\nbuilder1 ; builder2 x86_64-linux\n\n",
		"ssh://[::1]:2222 - - - - - -",
		"local x86_64-linux",
		"ssh://-oProxyCommand=x",
		"builder x86_64-linux - x",
		"builder x86_64-linux - 1 -3",
		"builder - - - - - - - extra",
		"ssh://b - - - 1e400",
		"http://cache - - -",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		entries := 0
		for _, line := range strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == ';' }) {
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			line = strings.TrimSpace(line)
			if strings.HasPrefix(line, "@") {
				t.Skip("includes a file")
			}
			if line != "" {
				entries++
			}
		}
		ms, err := worker.ParseMachines(text, "x86_64-linux")
		if err != nil {
			return
		}
		if len(ms) > entries {
			t.Fatalf("%d machines from %d entries", len(ms), entries)
		}
		for _, m := range ms {
			if !strings.HasPrefix(m.URI, "ssh://") && !strings.HasPrefix(m.URI, "ssh-ng://") {
				t.Fatalf("%q: machine %q", text, m.URI)
			}
			if m.Host == "" || strings.HasPrefix(m.Host, "-") || strings.ContainsAny(m.Host, " \t\n") {
				t.Fatalf("%q: host %q", text, m.Host)
			}
			if m.MaxJobs < 0 {
				t.Fatalf("%q: max jobs %d", text, m.MaxJobs)
			}
			if math.IsNaN(m.SpeedFactor) || math.IsInf(m.SpeedFactor, 0) || m.SpeedFactor < 1 {
				t.Fatalf("%q: speed factor %v", text, m.SpeedFactor)
			}
			if len(m.Systems) == 0 {
				t.Fatalf("%q: no systems", text)
			}
			if _, err := base64.StdEncoding.DecodeString(m.HostKey); err != nil {
				t.Fatalf("%q: host key %q", text, m.HostKey)
			}
			line := renderMachine(m)
			again, err := worker.ParseMachines(line, "x86_64-linux")
			if err != nil {
				t.Fatalf("%q: %+v written as %q does not parse: %v", text, m, line, err)
			}
			if len(again) != 1 || !reflect.DeepEqual(again[0], m) {
				t.Fatalf("%q: %+v written as %q parses as %+v", text, m, line, again)
			}
		}
	})
}
