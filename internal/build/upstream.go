package build

import (
	"context"

	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Progress hears what the farm copies from upstream binary caches for a
// request; a client's ssh-ng:// session shows it as Nix's own "copying
// path … from …" activities. Calls may come from several goroutines.
type Progress interface {
	// Copying is called when a path starts to be fetched from the cache
	// at from; done is called once, when it is in the farm store or has
	// failed.
	Copying(p storepath.Path, from string) (done func(err error))
	// Warning is something the client should read, such as a cache that
	// cannot be reached and is skipped.
	Warning(msg string)
}

// Upstream is what the protocol servers need from the farm's upstream
// binary caches, on an account's behalf: what they offer the account
// (paths signed by keys the account trusts), and fetching it.
type Upstream interface {
	// Substitutable returns which of paths the account lacks and could
	// have from an upstream cache, with what the cache says of them.
	Substitutable(ctx context.Context, account string, paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error)
	// Substitute fetches those of paths the account lacks that an
	// upstream cache has, with their closures, into the farm store and
	// the account's view. A path that cannot be had is not an error; one
	// that failed to fetch or verify is (the others are still fetched).
	Substitute(ctx context.Context, account string, paths []storepath.Path, progress Progress) error
}

// Missing is what realising some derived paths would take (Nix's
// queryMissing): derivations to build, paths to fetch from upstream
// caches, paths nobody can provide, and the download's compressed and
// unpacked sizes.
type Missing struct {
	WillBuild, WillSubstitute, Unknown []storepath.Path
	DownloadSize, NarSize              uint64
}
