package sshd_test

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/sshd"
)

// FuzzParseAuthorizedKeys checks the authorized_keys parser: no panic; no
// more keys than lines; every key names an account of one word, from a
// line that exists; and the keys written out again as "key account" lines
// parse to the same accounts.
func FuzzParseAuthorizedKeys(f *testing.F) {
	const (
		ed    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINnN09injWZRbmW4qk783QcRXAqnUMKhLQ93Bv0G8Nz6"
		rsa   = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCpbkqBbEgl44rvDqOGAh6AxL8W+HAIHkFg87RqyzjBQlBIp1V4TmtnEbfnzdHdNTZY2a/LLbrzv7LoExGng3yYlb6CvXmK4QonyecraMsLM4NGYWNcqtIOTLdo0dBBWHzh9XnGl2PC1vyhW2GGwoA/xYse8E266FnzK5MSjN+qkQ=="
		ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBA1bM5IaM75rlxpi3iBjyWTIclh8fgK7Pl54KLiBYGj6AQvqQPZ4ts4rCvX9LTWDTs8aXDMpIl5lFSW3gu7bC90="
	)
	for _, s := range []string{
		ed + " alice\n",
		"# farm accounts\n" + ed + " alice\n" + rsa + " bob laptop\n\n" + ecdsa + "\n",
		`restrict,command="nix-store --serve" ` + ed + " alice\r\n",
		ed + " alice\n" + ed + " bob\n",
		ed + " alice\n" + ed + " alice again\n",
		"ssh-ed25519 AAAA alice\n",
		"not a key\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := sshd.ParseAuthorizedKeys(data)
		if err != nil {
			return
		}
		lines := bytes.Count(data, []byte("\n")) + 1
		if len(keys) > lines {
			t.Fatalf("%d keys from %d lines", len(keys), lines)
		}
		var out strings.Builder
		for fp, k := range keys {
			if fp != string(k.Key.Marshal()) {
				t.Fatalf("key indexed under another key")
			}
			if k.Account == "" || len(strings.Fields(k.Account)) != 1 || strings.Fields(k.Account)[0] != k.Account {
				t.Fatalf("account %q", k.Account)
			}
			if k.Line < 1 || k.Line > lines {
				t.Fatalf("line %d of %d", k.Line, lines)
			}
			out.WriteString(strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(k.Key)), "\n") + " " + k.Account + "\n")
		}
		again, err := sshd.ParseAuthorizedKeys([]byte(out.String()))
		if err != nil {
			t.Fatalf("keys written out do not parse: %v\n%s", err, out.String())
		}
		if len(again) != len(keys) {
			t.Fatalf("%d keys written out read back as %d", len(keys), len(again))
		}
		for fp, k := range keys {
			if again[fp].Account != k.Account {
				t.Fatalf("account %q read back as %q", k.Account, again[fp].Account)
			}
		}
	})
}
