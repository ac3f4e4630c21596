package substituter

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nixfarm/nixfarm/internal/storepath"
)

// cacheInfoFile is the file at a cache's root that describes it.
const cacheInfoFile = "nix-cache-info"

// maxCacheInfo is the largest nix-cache-info read.
const maxCacheInfo = 64 << 10

// defaultPriority is a cache's Priority when nix-cache-info gives none, as
// in Nix's BinaryCacheStore.
const defaultPriority = 50

// cacheInfo is what nix-cache-info says.
type cacheInfo struct {
	StoreDir      string
	WantMassQuery bool
	Priority      int
}

// parseCacheInfo parses nix-cache-info: "Key: value" lines, as Nix reads
// them (keys and values trimmed, unknown keys and lines without a colon
// ignored). StoreDir, if given, must be /nix/store; Priority, if given, a
// number from 0 to 10000.
func parseCacheInfo(data []byte) (*cacheInfo, error) {
	if len(data) > maxCacheInfo {
		return nil, fmt.Errorf("larger than %d bytes", maxCacheInfo)
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, errors.New("contains a NUL byte")
	}
	info := &cacheInfo{StoreDir: storepath.Dir, Priority: defaultPriority}
	for n, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch key {
		case "StoreDir":
			if value != storepath.Dir {
				return nil, fmt.Errorf("line %d: StoreDir is %q, not %s", n+1, value, storepath.Dir)
			}
		case "WantMassQuery":
			info.WantMassQuery = value == "1"
		case "Priority":
			p, err := strconv.Atoi(value)
			if err != nil || p < 0 || p > 10000 {
				return nil, fmt.Errorf("line %d: Priority %q is not a number from 0 to 10000", n+1, value)
			}
			info.Priority = p
		}
	}
	return info, nil
}

// String renders info as a nix-cache-info file.
func (info *cacheInfo) String() string {
	mass := "0"
	if info.WantMassQuery {
		mass = "1"
	}
	return fmt.Sprintf("StoreDir: %s\nWantMassQuery: %s\nPriority: %d\n", info.StoreDir, mass, info.Priority)
}
