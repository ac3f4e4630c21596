package binarycache

import (
	"context"
	"io"

	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Stats returns how many compressed copies c made, the bytes and number
// of copies it holds.
func Stats(c *Cache) (made int, total int64, n int) { return c.copies.stats() }

// WrapCompressor replaces c's compressor with wrap around it (before
// use): wrap may write to dst itself, and calls next to compress.
func WrapCompressor(c *Cache, wrap func(dst io.Writer, next func() error) error) {
	inner := c.compressor
	c.compressor = func(ctx context.Context, view store.Store, p storepath.Path, info *store.PathInfo, f format, dst io.Writer) error {
		return wrap(dst, func() error { return inner(ctx, view, p, info, f, dst) })
	}
}

// ParseRoute exposes the route parser to the fuzz target: it returns the
// route's kind (0: not found) and its parts.
func ParseRoute(path string) (kind int, hashPart, narHash, ext string, drv storepath.Path) {
	rt := parseRoute(path)
	return int(rt.kind), rt.hashPart, rt.narHash, formats[rt.format].ext, rt.drv
}
