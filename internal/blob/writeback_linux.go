package blob

import "golang.org/x/sys/unix"

// writeback starts writing the bytes written since the last call to disk,
// without waiting for them. Sync then finds little left to flush: the disk
// works while the blob streams in, not after it. Errors are left for Sync
// to report.
func (w *dirWriter) writeback() {
	raw, err := w.f.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		unix.SyncFileRange(int(fd), w.flushed, w.written-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
	})
	w.flushed = w.written
}
