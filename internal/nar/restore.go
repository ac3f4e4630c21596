package nar

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Modes given to restored nodes; see Restore.
const (
	restoreDirMode  = 0o755
	restoreFileMode = 0o644
	restoreExecMode = 0o755
)

// Restore unpacks the NAR read from r into target, like `nix-store
// --restore`. target must not exist; its parent must. The root node becomes
// target itself: a directory, regular file or symlink.
//
// The NAR is validated as by Reader, so entry names can't be empty, ".",
// ".." or contain "/". Nothing is created outside target: every node is
// created relative to target through an os.Root, with O_EXCL for files, and
// symlinks are created as they are but never followed. Restore reads
// exactly the NAR from r and nothing after it.
//
// Directories get mode 0755 and regular files 0644, or 0755 if executable,
// whatever the process umask: this is what nix-store --restore of Nix 2.8
// produces, because it resets the umask to 022 at startup, creates
// directories with 0777 and files with 0666, and adds 0111 to executables
// with fchmod (checked under umasks 000, 022, 027 and 077). No times or
// owners are set. Like Nix, callers that add the result to a store must
// canonicalise it afterwards (0444/0555, mtime 1).
//
// On error Restore returns it and leaves what it has created; the caller
// removes target.
func Restore(r io.Reader, target string) error {
	if _, err := os.Lstat(target); err == nil {
		return fmt.Errorf("restoring nar: target %q already exists: %w", target, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restoring nar: target %q: %w", target, err)
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	nr := &Reader{src: r, buf: *bp}

	h, err := nr.Next()
	if err != nil {
		if err == io.EOF { // can't happen: a NAR has a root
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("restoring nar into %q: %w", target, err)
	}
	switch h.Type {
	case TypeRegular:
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, restoreFileMode)
		if err != nil {
			return fmt.Errorf("restoring nar: %w", err)
		}
		if err := writeFile(f, nr, h); err != nil {
			return fmt.Errorf("restoring nar into %q: %w", target, err)
		}
	case TypeSymlink:
		if err := os.Symlink(h.LinkTarget, target); err != nil {
			return fmt.Errorf("restoring nar: %w", err)
		}
	case TypeDirectory:
		if err := os.Mkdir(target, restoreDirMode); err != nil {
			return fmt.Errorf("restoring nar: %w", err)
		}
		root, err := os.OpenRoot(target)
		if err != nil {
			return fmt.Errorf("restoring nar: %w", err)
		}
		defer root.Close()
		if err := restoreTree(nr, root); err != nil {
			return fmt.Errorf("restoring nar into %q: %w", target, err)
		}
	}
	if _, err := nr.Next(); err != io.EOF {
		if err == nil {
			err = errors.New("nar has nodes after its root") // can't happen
		}
		return fmt.Errorf("restoring nar into %q: %w", target, err)
	}
	return nil
}

// restoreTree creates the entries of the root directory, opened as root,
// until the NAR ends.
func restoreTree(nr *Reader, root *os.Root) error {
	if err := root.Chmod(".", restoreDirMode); err != nil {
		return err
	}
	for {
		h, err := nr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := h.Path[1:] // relative to root
		switch h.Type {
		case TypeRegular:
			mode := os.FileMode(restoreFileMode)
			if h.Executable {
				mode = restoreExecMode
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			if err := writeFile(f, nr, h); err != nil {
				return err
			}
		case TypeSymlink:
			if err := root.Symlink(h.LinkTarget, name); err != nil {
				return err
			}
		case TypeDirectory:
			if err := root.Mkdir(name, restoreDirMode); err != nil {
				return err
			}
			if err := root.Chmod(name, restoreDirMode); err != nil {
				return err
			}
		}
	}
}

// writeFile copies the current file's contents from nr into f, sets f's
// mode and closes it.
func writeFile(f *os.File, nr *Reader, h *Header) error {
	mode := os.FileMode(restoreFileMode)
	if h.Executable {
		mode = restoreExecMode
	}
	err := f.Chmod(mode) // undo the umask, as Nix does
	if err == nil {
		var n int64
		n, err = nr.WriteTo(f)
		if err == nil && n != h.Size {
			err = fmt.Errorf("wrote %d of the %d bytes of %q", n, h.Size, h.Path)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restoring %q: %w", h.Path, err)
	}
	return nil
}
