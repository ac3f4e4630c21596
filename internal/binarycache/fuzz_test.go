package binarycache_test

import (
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/binarycache"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// FuzzRoute: the route parser never panics, and what it accepts is
// exactly what it would print back: nothing else reaches the store.
func FuzzRoute(f *testing.F) {
	h := strings.Repeat("0", 32)
	nh := strings.Repeat("1", 52)
	for _, s := range []string{"/nix-cache-info", "/" + h + ".narinfo", "/nar/" + h + "-" + nh + ".nar",
		"/nar/" + h + "-" + nh + ".nar.zst", "/nar/" + h + "-" + nh + ".nar.xz", "/log/" + h + "-x.drv",
		"", "/", "/nar/", "/log/../x", "/" + h + "-.narinfo", "/nar/" + h + "--" + nh + ".nar", "//nix-cache-info"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		kind, hashPart, narHash, ext, drv := binarycache.ParseRoute(path)
		var back string
		switch kind {
		case 0:
			return
		case 1:
			back = "/nix-cache-info"
		case 2:
			back = "/" + hashPart + ".narinfo"
		case 3:
			back = "/nar/" + hashPart + "-" + narHash + ext
		case 4:
			if _, err := storepath.Parse(string(drv)); err != nil || !drv.IsDerivation() {
				t.Fatalf("%q: log of %q", path, drv)
			}
			back = "/log/" + drv.Base()
		default:
			t.Fatalf("%q: kind %d", path, kind)
		}
		if back != path {
			t.Fatalf("%q parsed as %q", path, back)
		}
		if kind == 2 || kind == 3 {
			if len(hashPart) != storepath.HashLen || strings.ContainsAny(hashPart+narHash, "/.-eotu") {
				t.Fatalf("%q: hash part %q, NAR hash %q", path, hashPart, narHash)
			}
		}
	})
}
