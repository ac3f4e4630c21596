package binarycache

import (
	"strings"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// kind is what a request asks for.
type kind int

const (
	notFound kind = iota
	cacheInfo
	narInfo
	narFile
	buildLog
)

// format is how a NAR file is compressed.
type format int

const (
	plain      format = iota // .nar
	zstdFormat               // .nar.zst
	xzFormat                 // .nar.xz
)

var formats = [...]struct{ ext, compression string }{
	plain:      {".nar", "none"},
	zstdFormat: {".nar.zst", "zstd"},
	xzFormat:   {".nar.xz", "xz"},
}

// narHashLen is the length of a SHA-256 in nix32.
var narHashLen = nixhash.Nix32Len(32)

// route is a parsed request path.
type route struct {
	kind     kind
	hashPart string         // narInfo, narFile
	narHash  string         // narFile: the NAR's SHA-256, nix32
	format   format         // narFile
	drv      storepath.Path // buildLog
}

// parseRoute parses a request's URL path. Everything it returns is
// validated: hash parts and NAR hashes are nix32 of the right length, and
// a log's derivation is a valid store path.
func parseRoute(path string) route {
	if !strings.HasPrefix(path, "/") {
		return route{}
	}
	switch {
	case path == "/nix-cache-info":
		return route{kind: cacheInfo}
	case strings.HasSuffix(path, ".narinfo"):
		h := strings.TrimSuffix(path[1:], ".narinfo")
		if isNix32(h, storepath.HashLen) {
			return route{kind: narInfo, hashPart: h}
		}
	case strings.HasPrefix(path, "/nar/"):
		name := path[len("/nar/"):]
		f := plain
		switch {
		case strings.HasSuffix(name, ".nar.zst"):
			f = zstdFormat
		case strings.HasSuffix(name, ".nar.xz"):
			f = xzFormat
		case strings.HasSuffix(name, ".nar"):
		default:
			return route{}
		}
		name = strings.TrimSuffix(name, formats[f].ext)
		h, nh, ok := strings.Cut(name, "-")
		if ok && isNix32(h, storepath.HashLen) && isNix32(nh, narHashLen) {
			return route{kind: narFile, hashPart: h, narHash: nh, format: f}
		}
	case strings.HasPrefix(path, "/log/"):
		base := path[len("/log/"):]
		if p, err := storepath.FromBase(base); err == nil && p.IsDerivation() {
			return route{kind: buildLog, drv: p}
		}
	}
	return route{}
}

func isNix32(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nixhash.IsNix32Char(s[i]) {
			return false
		}
	}
	return true
}
