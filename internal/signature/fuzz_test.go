package signature_test

import (
	"testing"

	"github.com/nixfarm/nixfarm/internal/signature"
)

// FuzzParsePublicKey checks the key and signature parsers, which read
// operator files and signatures that clients send with paths: no panic;
// an accepted key renders to a string that parses to the same key; and
// Verify never panics on any signature and never accepts one for a
// different fingerprint than what was signed.
func FuzzParsePublicKey(f *testing.F) {
	f.Add("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", "cache.nixos.org-1:Zm9v")
	f.Add("  k:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n", "k:"+string(make([]byte, 88)))
	f.Add("k:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjZ=", "")
	f.Add(":", "k:")
	f.Add("a:b:c", "a:b:c")
	f.Fuzz(func(t *testing.T, key, sig string) {
		k, err := signature.ParsePublicKey(key)
		if err == nil {
			again, err := signature.ParsePublicKey(k.String())
			if err != nil || again.Name != k.Name || !again.Key.Equal(k.Key) {
				t.Fatalf("%q parses as %v, which reads back as %v, %v", key, k, again, err)
			}
			_ = k.Verify("1;/nix/store/x;sha256:x;1;", sig)
		}
		if _, err := signature.ParseSecretKey(key); err == nil {
			sk, _ := signature.ParseSecretKey(key)
			s := sk.Sign("fingerprint")
			if !sk.Public().Verify("fingerprint", s) || sk.Public().Verify("fingerprint2", s) {
				t.Fatalf("%q: a signature does not verify as it should", key)
			}
		}
	})
}
