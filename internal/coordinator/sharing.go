package coordinator

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// buildKey names a build by everything that decides its outputs: the
// derivation path, the BasicDerivation as a worker receives it (builder,
// arguments, environment, outputs, input paths), and the contents of
// every path in its input closure as the requesting account sees them
// (each one's fingerprint: path, NAR hash, NAR size, references). Two
// requests with the same key ask for the same computation on the same
// bytes, so one build serves both, whichever their accounts; requests
// that differ in one input byte have different keys and are built apart.
func buildKey(drvPath storepath.Path, drv *derivation.Basic, closure []*store.PathInfo) string {
	h := sha256.New()
	io.WriteString(h, "nixfarm build key 1\n"+string(drvPath)+"\n")
	w := wire.NewWriter(h)
	drv.Write(w) // a hash does not fail; a derivation that cannot be written was refused when read
	w.Flush()
	for _, info := range closure {
		io.WriteString(h, "\n"+signature.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References))
	}
	return nixhash.FromDigest(nixhash.SHA256, h).Nix32()
}

// adopt gives the account whose view st is the outputs of an earlier
// build with the same key, if the farm has them, and reports whether it
// did.
func adopt(ctx context.Context, st store.Store, key string, outputs map[string]storepath.Path) (bool, error) {
	sh, ok := st.(store.Sharer)
	if !ok {
		return false, nil
	}
	return sh.AdoptBuild(ctx, key, outputs)
}

// share records the outputs of the successful build f under its key, so
// that identical requests of other accounts are answered from them.
func (c *Coordinator) share(ctx context.Context, f *inflight, res *build.Result, log *slog.Logger) {
	sh, ok := c.store.For(f.account).(store.Sharer)
	if !ok {
		return
	}
	// Only what a worker produced, as the farm received it, is shared.
	if len(res.Produced) != len(res.Outputs) {
		return
	}
	outputs := make(map[string]*store.PathInfo, len(res.Outputs))
	for name, p := range res.Outputs {
		c, ok := res.Produced[name]
		if !ok {
			return
		}
		outputs[name] = &store.PathInfo{Path: p, NarHash: c.NarHash, NarSize: c.NarSize, References: c.References, Deriver: f.drvPath}
	}
	if err := sh.RecordBuild(ctx, f.key, outputs, res.Worker); err != nil {
		log.Warn("recording the build's outputs for sharing", "err", err)
	}
}
