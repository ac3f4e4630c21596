package signature_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// The fixtures in testdata were made by the real Nix; see testdata/gen.sh.

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type pathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
}

func loadPathInfo(t *testing.T) []pathInfo {
	t.Helper()
	var infos []pathInfo
	if err := json.Unmarshal([]byte(readFile(t, "path-info.json")), &infos); err != nil {
		t.Fatal(err)
	}
	if len(infos) == 0 {
		t.Fatal("no paths in path-info.json")
	}
	return infos
}

var keyNames = []string{"cache.example.org-1", "other-key"}

func loadKeys(t *testing.T) ([]signature.SecretKey, []signature.PublicKey) {
	t.Helper()
	var secs []signature.SecretKey
	var pubs []signature.PublicKey
	for _, name := range keyNames {
		secText, pubText := readFile(t, name+".sec"), readFile(t, name+".pub")
		sec, err := signature.ParseSecretKey(secText)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := signature.ParsePublicKey(pubText)
		if err != nil {
			t.Fatal(err)
		}
		if sec.Name != name || pub.Name != name {
			t.Fatalf("key names %q, %q; want %q", sec.Name, pub.Name, name)
		}
		if sec.String() != secText || pub.String() != pubText {
			t.Errorf("%s: String does not round-trip the key files", name)
		}
		if got := sec.Public(); got.String() != pubText {
			t.Errorf("%s: Public() = %s, Nix wrote %s", name, got, pubText)
		}
		secs = append(secs, sec)
		pubs = append(pubs, pub)
	}
	return secs, pubs
}

func fingerprintOf(t *testing.T, info pathInfo) string {
	t.Helper()
	p, err := storepath.Parse(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := nixhash.Parse(info.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := storepath.ParseList(info.References)
	if err != nil {
		t.Fatal(err)
	}
	// Fingerprint must sort references itself.
	slices.Reverse(refs)
	return signature.Fingerprint(p, h, info.NarSize, refs)
}

// TestNixSignatures reproduces the signatures `nix store sign` made and
// verifies them.
func TestNixSignatures(t *testing.T) {
	secs, pubs := loadKeys(t)
	withRefs := false
	for _, info := range loadPathInfo(t) {
		t.Run(filepath.Base(info.Path), func(t *testing.T) {
			withRefs = withRefs || len(info.References) > 1
			fp := fingerprintOf(t, info)
			if len(info.Signatures) != len(secs) {
				t.Fatalf("%d signatures, want %d", len(info.Signatures), len(secs))
			}
			for i, sec := range secs {
				want := info.Signatures[i]
				if !strings.HasPrefix(want, sec.Name+":") {
					t.Fatalf("signature %d is %q, not by %s", i, want, sec.Name)
				}
				if got := sec.Sign(fp); got != want {
					t.Errorf("Sign(%q) = %s, Nix made %s", fp, got, want)
				}
				if !pubs[i].Verify(fp, want) {
					t.Errorf("%s rejects Nix's signature", pubs[i].Name)
				}
				if pubs[1-i].Verify(fp, want) {
					t.Errorf("%s accepts a signature by %s", pubs[1-i].Name, sec.Name)
				}
			}
			if !signature.VerifyAny(pubs[1:], fp, info.Signatures) {
				t.Error("VerifyAny rejects")
			}
			for _, bad := range tamper(fp) {
				if signature.VerifyAny(pubs, bad, info.Signatures) {
					t.Errorf("VerifyAny accepts tampered fingerprint %q", bad)
				}
			}
		})
	}
	if !withRefs {
		t.Error("no fixture path with several references")
	}
}

// tamper returns variants of a fingerprint that differ in one field.
func tamper(fp string) []string {
	f := strings.Split(fp, ";")
	variant := func(i int, v string) string {
		g := slices.Clone(f)
		g[i] = v
		return strings.Join(g, ";")
	}
	out := []string{
		variant(0, "2"),
		variant(1, strings.Replace(f[1], "-", "-x", 1)),
		variant(2, f[2][:len(f[2])-1]+"0"),
		variant(3, f[3]+"0"),
		variant(4, "/nix/store/00000000000000000000000000000000-x"),
		fp + ",",
		fp + "\n",
		"",
	}
	if refs := strings.Split(f[4], ","); len(refs) > 1 {
		slices.Reverse(refs)
		out = append(out, variant(4, strings.Join(refs, ",")), variant(4, refs[0]))
	}
	return out
}

func TestFingerprint(t *testing.T) {
	p := storepath.Path("/nix/store/9zca7jhjdimfbgn57m5ss8175xl03llp-with-refs")
	h, err := nixhash.Parse("sha256-w4itmT+1BZEMxlYHInSb1ub6d9Fa5Grar/LaboBptgU=")
	if err != nil {
		t.Fatal(err)
	}
	refs := []storepath.Path{
		"/nix/store/9wpjmnm8ni72bmmwjam53zrvk45yngi3-data",
		"/nix/store/12wigjpizrn8axaqxj288q1b751qmwya-a",
	}
	want := "1;/nix/store/9zca7jhjdimfbgn57m5ss8175xl03llp-with-refs;" +
		"sha256:" + h.Nix32() + ";208;" +
		"/nix/store/12wigjpizrn8axaqxj288q1b751qmwya-a,/nix/store/9wpjmnm8ni72bmmwjam53zrvk45yngi3-data"
	if got := signature.Fingerprint(p, h, 208, refs); got != want {
		t.Errorf("Fingerprint = %q\nwant %q", got, want)
	}
	if refs[0] != "/nix/store/9wpjmnm8ni72bmmwjam53zrvk45yngi3-data" {
		t.Error("Fingerprint reordered its argument")
	}
	if got := signature.Fingerprint(p, h, 1, nil); !strings.HasSuffix(got, ";1;") {
		t.Errorf("Fingerprint without references = %q", got)
	}
}

func TestGenerate(t *testing.T) {
	sec, pub, err := signature.Generate("test-1")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Public().String() != pub.String() {
		t.Error("Generate returned mismatched keys")
	}
	sec2, err := signature.ParseSecretKey(sec.String())
	if err != nil || sec2.String() != sec.String() {
		t.Fatalf("ParseSecretKey(String()) = %v, %v", sec2, err)
	}
	pub2, err := signature.ParsePublicKey(pub.String() + "\n")
	if err != nil || pub2.String() != pub.String() {
		t.Fatalf("ParsePublicKey(String()+newline) = %v, %v", pub2, err)
	}
	sig := sec.Sign("hello")
	if !strings.HasPrefix(sig, "test-1:") || !pub.Verify("hello", sig) || pub.Verify("hellO", sig) {
		t.Errorf("Sign/Verify round trip failed: %s", sig)
	}
	for _, name := range []string{"", "a:b"} {
		if _, _, err := signature.Generate(name); !errors.Is(err, signature.ErrInvalidKey) {
			t.Errorf("Generate(%q): %v", name, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	good := ed25519.NewKeyFromSeed(seed)
	b64 := base64.StdEncoding.EncodeToString
	mismatched := append(append([]byte{}, good[:32]...), make([]byte, 32)...)
	secrets := []string{
		"",
		"name",
		"name:",
		":" + b64(good),
		"name:" + b64(good[:63]),
		"name:" + b64(append(good, 0)),
		"name:" + b64(good)[1:],
		"name:" + b64(good) + "!",
		"name:" + b64(mismatched),
		"name:" + b64(good.Public().(ed25519.PublicKey)), // a public key
	}
	for _, s := range secrets {
		if k, err := signature.ParseSecretKey(s); !errors.Is(err, signature.ErrInvalidKey) {
			t.Errorf("ParseSecretKey(%q) = %v, %v; want ErrInvalidKey", s, k, err)
		}
	}
	pub := good.Public().(ed25519.PublicKey)
	publics := []string{
		"",
		"name:",
		":" + b64(pub),
		"name:" + b64(pub[:31]),
		"name:" + b64(good), // a secret key
		"name:" + b64(pub) + "x",
	}
	for _, s := range publics {
		if k, err := signature.ParsePublicKey(s); !errors.Is(err, signature.ErrInvalidKey) {
			t.Errorf("ParsePublicKey(%q) = %v, %v; want ErrInvalidKey", s, k, err)
		}
	}
	if _, err := signature.ParsePublicKey("name:" + b64(pub)); err != nil {
		t.Errorf("ParsePublicKey of a good key: %v", err)
	}
}

func TestVerifyRejectsMalformed(t *testing.T) {
	sec, pub, err := signature.Generate("k")
	if err != nil {
		t.Fatal(err)
	}
	sig := sec.Sign("fp")
	_, raw, _ := strings.Cut(sig, ":")
	for _, bad := range []string{
		"",
		raw,                     // no name
		"other:" + raw,          // another key's name
		"k:" + raw[:len(raw)-4], // short
		"k:" + raw + "AAAA",     // long
		"k:" + raw[1:] + "!",    // not base64
		"K:" + raw,              // names are case-sensitive
		"k:" + strings.ToUpper(raw),
	} {
		if pub.Verify("fp", bad) {
			t.Errorf("Verify accepts %q", bad)
		}
	}
	if signature.VerifyAny(nil, "fp", []string{sig}) {
		t.Error("VerifyAny with no keys accepts")
	}
	if signature.VerifyAny([]signature.PublicKey{pub}, "fp", nil) {
		t.Error("VerifyAny with no signatures accepts")
	}
	if !signature.VerifyAny([]signature.PublicKey{pub}, "fp", []string{"junk", "other:" + raw, sig}) {
		t.Error("VerifyAny does not look past bad signatures")
	}
	if (signature.PublicKey{Name: "k"}).Verify("fp", sig) {
		t.Error("a public key without key bytes accepts")
	}
}

// A derived key is the same for the same label, another for another
// label or another master key, and signs like any key.
func TestDerive(t *testing.T) {
	master, _, _ := signature.Generate("farm-1")
	other, _, _ := signature.Generate("farm-1")
	a := master.Derive("farm-alice-1", "account\x00alice")
	if again := master.Derive("farm-alice-1", "account\x00alice"); again.String() != a.String() {
		t.Fatal("deriving twice gave two keys")
	}
	if b := master.Derive("farm-bob-1", "account\x00bob"); string(b.Key) == string(a.Key) {
		t.Fatal("two labels gave one key")
	}
	if o := other.Derive("farm-alice-1", "account\x00alice"); string(o.Key) == string(a.Key) {
		t.Fatal("two masters gave one key")
	}
	if a.Name != "farm-alice-1" || !a.Public().Verify("fp", a.Sign("fp")) || master.Public().Verify("fp", a.Sign("fp")) {
		t.Fatal("the derived key does not sign as itself")
	}
}
