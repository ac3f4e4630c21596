package narinfo_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// The fixtures in testdata were made by the real Nix; see testdata/gen.sh.

func fixtures(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*", "*.narinfo"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[f] = b
	}
	return out
}

func publicKeys(t *testing.T) []signature.PublicKey {
	t.Helper()
	var keys []signature.PublicKey
	for _, name := range []string{"test-cache-1", "another-cache-1"} {
		b, err := os.ReadFile(filepath.Join("testdata", name+".pub"))
		if err != nil {
			t.Fatal(err)
		}
		k, err := signature.ParsePublicKey(string(b))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

func parse(t *testing.T, s string) *narinfo.NarInfo {
	t.Helper()
	ni, err := narinfo.Parse(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

// TestNixNarInfos round-trips narinfo files written by `nix copy` byte for
// byte and verifies their signatures.
func TestNixNarInfos(t *testing.T) {
	keys := publicKeys(t)
	signed, twoSigs, withDeriver, withCA := 0, 0, 0, 0
	for file, data := range fixtures(t) {
		t.Run(file, func(t *testing.T) {
			ni := parse(t, string(data))
			if got := ni.String(); got != string(data) {
				t.Errorf("String() differs from Nix's file:\n%s\nwant:\n%s", got, data)
			}
			if hash := strings.TrimSuffix(filepath.Base(file), ".narinfo"); ni.StorePath.HashPart() != hash {
				t.Errorf("StorePath %s in %s", ni.StorePath, file)
			}
			compression := filepath.Base(filepath.Dir(file))
			if ni.Compression != compression || !strings.HasPrefix(ni.URL, "nar/"+ni.FileHash.Nix32()+".nar") {
				t.Errorf("Compression %q URL %q in %s", ni.Compression, ni.URL, file)
			}
			if compression == "none" && (!ni.FileHash.Equal(ni.NarHash) || ni.FileSize != ni.NarSize) {
				t.Errorf("uncompressed file differs from the NAR")
			}
			if ni.NarHash.Algo != nixhash.SHA256 || ni.FileHash.Algo != nixhash.SHA256 {
				t.Errorf("hashes %s %s", ni.NarHash, ni.FileHash)
			}
			if ni.Deriver != "" {
				withDeriver++
			}
			if ni.CA != "" {
				withCA++
			}
			fp := ni.Fingerprint()
			if want := signature.Fingerprint(ni.StorePath, ni.NarHash, ni.NarSize, ni.References); fp != want {
				t.Errorf("Fingerprint = %q, want %q", fp, want)
			}
			if compression == "none" {
				if len(ni.Sigs) != 0 {
					t.Errorf("unsigned cache has Sigs %v", ni.Sigs)
				}
				return
			}
			signed++
			if len(ni.Sigs) > 1 {
				twoSigs++
			}
			for _, sig := range ni.Sigs {
				if !signature.VerifyAny(keys, fp, []string{sig}) {
					t.Errorf("signature %s does not verify", sig)
				}
			}
			bad := *ni
			bad.NarSize++
			if signature.VerifyAny(keys, bad.Fingerprint(), ni.Sigs) {
				t.Error("signature verifies for a different NarSize")
			}
			bad = *ni
			bad.References = append([]storepath.Path{}, ni.References...)
			bad.References = append(bad.References, ni.StorePath+"x")
			if signature.VerifyAny(keys, bad.Fingerprint(), ni.Sigs) {
				t.Error("signature verifies with an extra reference")
			}
		})
	}
	if signed == 0 || twoSigs == 0 || withDeriver == 0 || withCA == 0 {
		t.Errorf("fixtures lack variety: %d signed, %d with two sigs, %d with deriver, %d with CA",
			signed, twoSigs, withDeriver, withCA)
	}
}

func TestParseFields(t *testing.T) {
	const in = "StorePath: /nix/store/qssa7zy1dj91gk2qy52fzpk7pljqipxz-built\n" +
		"URL: nar/1fwnx504354sk57h4lqb97xix8hfjndjh34d20bm1gp8iiiaqzzl.nar.xz\n" +
		"Compression: xz\n" +
		"FileHash: sha256:1fwnx504354sk57h4lqb97xix8hfjndjh34d20bm1gp8iiiaqzzl\n" +
		"FileSize: 264\n" +
		"NarHash: sha256:1lnx7xjhhf5a8bq0bjrvljb4yrvxqipkrlnc287nfa9alqfffbli\n" +
		"NarSize: 576\n" +
		"References: vnq0s4c2k43szh9777lpj3y37w7p7l6h-with-refs qssa7zy1dj91gk2qy52fzpk7pljqipxz-built\n" +
		"Deriver: ihn5nhpagr0pyda72sdrvlf2bz9rkn7p-built.drv\n" +
		"System: x86_64-linux\n" +
		"Sig: b:x\n" +
		"Sig: a:y\n" +
		"CA: fixed:r:sha1:3a4xd5xnscyvwpn989nqjawqb8vm5rsd\n"
	ni := parse(t, in)
	checks := []struct{ what, got, want string }{
		{"StorePath", string(ni.StorePath), "/nix/store/qssa7zy1dj91gk2qy52fzpk7pljqipxz-built"},
		{"URL", ni.URL, "nar/1fwnx504354sk57h4lqb97xix8hfjndjh34d20bm1gp8iiiaqzzl.nar.xz"},
		{"Compression", ni.Compression, "xz"},
		{"FileHash", ni.FileHash.String(), "sha256:1fwnx504354sk57h4lqb97xix8hfjndjh34d20bm1gp8iiiaqzzl"},
		{"NarHash", ni.NarHash.String(), "sha256:1lnx7xjhhf5a8bq0bjrvljb4yrvxqipkrlnc287nfa9alqfffbli"},
		{"References", strings.Join(storepath.Strings(ni.References), " "),
			"/nix/store/vnq0s4c2k43szh9777lpj3y37w7p7l6h-with-refs /nix/store/qssa7zy1dj91gk2qy52fzpk7pljqipxz-built"},
		{"Deriver", string(ni.Deriver), "/nix/store/ihn5nhpagr0pyda72sdrvlf2bz9rkn7p-built.drv"},
		{"System", ni.System, "x86_64-linux"},
		{"Sigs", strings.Join(ni.Sigs, " "), "b:x a:y"},
		{"CA", ni.CA, "fixed:r:sha1:3a4xd5xnscyvwpn989nqjawqb8vm5rsd"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if ni.FileSize != 264 || ni.NarSize != 576 {
		t.Errorf("sizes %d %d", ni.FileSize, ni.NarSize)
	}
	// String sorts references and signatures, as Nix's sets do.
	want := strings.NewReplacer(
		"vnq0s4c2k43szh9777lpj3y37w7p7l6h-with-refs qssa7zy1dj91gk2qy52fzpk7pljqipxz-built",
		"qssa7zy1dj91gk2qy52fzpk7pljqipxz-built vnq0s4c2k43szh9777lpj3y37w7p7l6h-with-refs",
		"Sig: b:x\nSig: a:y\n", "Sig: a:y\nSig: b:x\n",
	).Replace(in)
	if got := ni.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
}

func TestParseLenient(t *testing.T) {
	const base = "StorePath: /nix/store/gd32ydpqqkjdy2981lks6zrrzkna0x35-data\n" +
		"URL: nar/x.nar.bz2\n" +
		"NarSize: 128\n"
	const narHash = "NarHash: sha256:1zg0cyyxdy4dpgrgzi1cb6fdd9xp7has24026jynylzmwi3ig1wv\n"
	tests := []struct {
		name  string
		in    string
		check func(ni *narinfo.NarInfo) bool
	}{
		{"compression defaults to bzip2", base + narHash,
			func(ni *narinfo.NarInfo) bool { return ni.Compression == "bzip2" }},
		{"unknown deriver", base + narHash + "Deriver: unknown-deriver\n",
			func(ni *narinfo.NarInfo) bool { return ni.Deriver == "" }},
		{"unknown key ignored", base + narHash + "Future: thing\n",
			func(ni *narinfo.NarInfo) bool { return ni.URL == "nar/x.nar.bz2" }},
		{"SRI hash", base + "NarHash: sha256-CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk=\n",
			func(ni *narinfo.NarInfo) bool { return ni.NarHash.Algo == nixhash.SHA256 }},
		{"hex hash", base + "NarHash: sha256:0a430879c266f8b57f4092a0f935cf3facd48bbccde5760d4748ca405171e969\n",
			func(ni *narinfo.NarInfo) bool {
				return ni.NarHash.Base64() == "CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk="
			}},
		{"empty references without space", base + narHash + "References:\n",
			func(ni *narinfo.NarInfo) bool { return len(ni.References) == 0 }},
		{"extra spaces between references", base + narHash +
			"References:  gd32ydpqqkjdy2981lks6zrrzkna0x35-data   vnq0s4c2k43szh9777lpj3y37w7p7l6h-with-refs \n",
			func(ni *narinfo.NarInfo) bool { return len(ni.References) == 2 }},
		{"no FileHash", base + narHash,
			func(ni *narinfo.NarInfo) bool { return ni.FileHash.IsZero() && ni.FileSize == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ni := parse(t, tt.in)
			if !tt.check(ni) {
				t.Errorf("parsed %+v", ni)
			}
			again := parse(t, ni.String())
			if again.String() != ni.String() {
				t.Errorf("String does not round-trip:\n%s\n%s", ni, again)
			}
		})
	}
}

func TestStringOmitsEmpty(t *testing.T) {
	ni := &narinfo.NarInfo{
		StorePath: "/nix/store/gd32ydpqqkjdy2981lks6zrrzkna0x35-data",
		URL:       "nar/x.nar",
		NarHash:   nixhash.SHA256Of(nil),
		NarSize:   8,
	}
	want := "StorePath: /nix/store/gd32ydpqqkjdy2981lks6zrrzkna0x35-data\n" +
		"URL: nar/x.nar\n" +
		"Compression: bzip2\n" +
		"NarHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n" +
		"NarSize: 8\n" +
		"References: \n"
	if got := ni.String(); got != want {
		t.Errorf("String() =\n%q\nwant\n%q", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	good := map[string]string{
		"StorePath":  "/nix/store/gd32ydpqqkjdy2981lks6zrrzkna0x35-data",
		"URL":        "nar/x.nar",
		"FileHash":   "sha256:1zg0cyyxdy4dpgrgzi1cb6fdd9xp7has24026jynylzmwi3ig1wv",
		"FileSize":   "128",
		"NarHash":    "sha256:1zg0cyyxdy4dpgrgzi1cb6fdd9xp7has24026jynylzmwi3ig1wv",
		"NarSize":    "128",
		"References": "gd32ydpqqkjdy2981lks6zrrzkna0x35-data",
		"Deriver":    "ihn5nhpagr0pyda72sdrvlf2bz9rkn7p-built.drv",
		"Sig":        "k:sig",
		"CA":         "fixed:r:sha256:1zg0cyyxdy4dpgrgzi1cb6fdd9xp7has24026jynylzmwi3ig1wv",
	}
	order := []string{"StorePath", "URL", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Deriver", "Sig", "CA"}
	build := func(change map[string]string) string {
		var b strings.Builder
		for _, k := range order {
			v, ok := change[k]
			if !ok {
				v = good[k]
			}
			if v == "<drop>" {
				continue
			}
			b.WriteString(k + ": " + v + "\n")
		}
		return b.String()
	}
	if _, err := narinfo.Parse(strings.NewReader(build(nil))); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	tests := []struct {
		name string
		in   string
		want string // in the error message
	}{
		{"empty", "", "StorePath"},
		{"no StorePath", build(map[string]string{"StorePath": "<drop>"}), "StorePath"},
		{"no URL", build(map[string]string{"URL": "<drop>"}), "URL"},
		{"empty URL", build(map[string]string{"URL": ""}), "URL"},
		{"no NarHash", build(map[string]string{"NarHash": "<drop>"}), "NarHash"},
		{"no NarSize", build(map[string]string{"NarSize": "<drop>"}), "NarSize"},
		{"zero NarSize", build(map[string]string{"NarSize": "0"}), "NarSize"},
		{"bad StorePath", build(map[string]string{"StorePath": "/nix/store/x-data"}), "line 1 (StorePath)"},
		{"relative StorePath", build(map[string]string{"StorePath": "gd32ydpqqkjdy2981lks6zrrzkna0x35-data"}), "line 1"},
		{"bad FileHash", build(map[string]string{"FileHash": "sha256:zz"}), "line 3 (FileHash)"},
		{"bare NarHash", build(map[string]string{"NarHash": "1zg0cyyxdy4dpgrgzi1cb6fdd9xp7has24026jynylzmwi3ig1wv"}), "line 5 (NarHash)"},
		{"bad FileSize", build(map[string]string{"FileSize": "12x"}), "line 4 (FileSize)"},
		{"negative NarSize", build(map[string]string{"NarSize": "-1"}), "line 6 (NarSize)"},
		{"huge NarSize", build(map[string]string{"NarSize": "18446744073709551616"}), "line 6 (NarSize)"},
		{"full path reference", build(map[string]string{"References": good["StorePath"]}), "line 7 (References)"},
		{"bad reference", build(map[string]string{"References": "abc-def"}), "line 7 (References)"},
		{"bad deriver", build(map[string]string{"Deriver": "/nix/store/ihn5nhpagr0pyda72sdrvlf2bz9rkn7p-built.drv"}), "line 8 (Deriver)"},
		{"bad Sig", build(map[string]string{"Sig": "nocolon"}), "line 9 (Sig)"},
		{"bad CA kind", build(map[string]string{"CA": "source:sha256:abc"}), "line 10 (CA)"},
		{"bad CA hash", build(map[string]string{"CA": "fixed:r:sha256:abc"}), "line 10 (CA)"},
		{"text CA not sha256", build(map[string]string{"CA": "text:sha1:3a4xd5xnscyvwpn989nqjawqb8vm5rsd"}), "line 10 (CA)"},
		{"repeated key", build(nil) + "URL: nar/y.nar\n", "line 11: repeated URL"},
		{"no colon", "StorePath /nix/store/x\n", "line 1"},
		{"no space", "StorePath:" + good["StorePath"] + "\n", "line 1: no space"},
		{"empty line", build(nil) + "\n", "line 11"},
		{"no final newline", strings.TrimSuffix(build(nil), "\n"), "line 10: no newline"},
		{"CRLF", strings.ReplaceAll(build(nil), "\n", "\r\n"), "line 1 (StorePath)"},
		{"too large", build(nil) + "X: " + strings.Repeat("y", narinfo.MaxSize) + "\n", "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ni, err := narinfo.Parse(strings.NewReader(tt.in))
			if !errors.Is(err, narinfo.ErrInvalid) {
				t.Fatalf("got %v, %v; want ErrInvalid", ni, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

type failingReader struct{}

var errRead = errors.New("read failed")

func (failingReader) Read([]byte) (int, error) { return 0, errRead }

func TestParseReadError(t *testing.T) {
	if _, err := narinfo.Parse(failingReader{}); !errors.Is(err, errRead) {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, data := range fixtures(f) {
		f.Add(data)
	}
	f.Add([]byte("StorePath: /nix/store/gd32ydpqqkjdy2981lks6zrrzkna0x35-data\nURL: u\nNarHash: sha256-CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk=\nNarSize: 1\nReferences:\nDeriver: unknown-deriver\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ni, err := narinfo.Parse(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, narinfo.ErrInvalid) {
				t.Fatalf("error not wrapping ErrInvalid: %v", err)
			}
			return
		}
		s := ni.String()
		again, err := narinfo.Parse(strings.NewReader(s))
		if err != nil {
			t.Fatalf("String() output does not parse: %v\n%s", err, s)
		}
		if s2 := again.String(); s2 != s {
			t.Fatalf("String() not stable:\n%s\n%s", s, s2)
		}
		_ = ni.Fingerprint()
	})
}

func BenchmarkParse(b *testing.B) {
	var data []byte
	for f, d := range fixtures(b) {
		if strings.Contains(f, "xz") && bytes.Count(d, []byte("Sig:")) > 1 {
			data = d
		}
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := narinfo.Parse(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
