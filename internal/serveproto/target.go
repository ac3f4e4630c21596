package serveproto

import (
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// writeBuiltOutputs writes the DrvOutputs of a build: per output, the id
// "sha256:<hashModulo>!<name>" and the realisation JSON.
func writeBuiltOutputs(w *wire.Writer, res *build.Result) error {
	outs := res.BuiltOutputs()
	w.Uint64(uint64(len(outs)))
	for _, r := range outs {
		w.String(r.ID)
		w.Bytes(r.JSON())
	}
	return w.Err()
}
