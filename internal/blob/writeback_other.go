//go:build !linux

package blob

func (w *dirWriter) writeback() {}
