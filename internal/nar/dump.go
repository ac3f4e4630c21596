package nar

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// DumpPath writes the NAR serialisation of the file, directory or symlink
// at path to w, like `nix-store --dump`. Symlinks are stored, never
// followed, and a regular file is executable when its owner may execute it
// (S_IXUSR, as in Nix); other file types are an error. A regular file is
// read through its own descriptor and must have the size fstat reported
// when it was opened.
func DumpPath(w io.Writer, path string) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	nw := NewWriter(w)
	if err := dump(nw, path, "/", *bp); err != nil {
		return err
	}
	return nw.Close()
}

func dump(nw *Writer, fsPath, narPath string, buf []byte) error {
	fi, err := os.Lstat(fsPath)
	if err != nil {
		return fmt.Errorf("dumping %q: %w", fsPath, err)
	}
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		return dumpFile(nw, fsPath, narPath, buf)
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(fsPath)
		if err != nil {
			return fmt.Errorf("dumping %q: %w", fsPath, err)
		}
		if err := nw.WriteHeader(&Header{Path: narPath, Type: TypeSymlink, LinkTarget: target}); err != nil {
			return fmt.Errorf("dumping %q: %w", fsPath, err)
		}
		return nil
	case mode.IsDir():
		if err := nw.WriteHeader(&Header{Path: narPath, Type: TypeDirectory}); err != nil {
			return fmt.Errorf("dumping %q: %w", fsPath, err)
		}
		f, err := os.Open(fsPath)
		if err != nil {
			return fmt.Errorf("dumping %q: %w", fsPath, err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("dumping %q: reading directory: %w", fsPath, err)
		}
		slices.Sort(names) // byte order, as NAR requires
		prefix := narPath
		if prefix == "/" {
			prefix = ""
		}
		for _, name := range names {
			if err := dump(nw, filepath.Join(fsPath, name), prefix+"/"+name, buf); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("dumping %q: unsupported file type %s", fsPath, fileType(mode))
	}
}

func dumpFile(nw *Writer, fsPath, narPath string, buf []byte) error {
	f, err := os.Open(fsPath)
	if err != nil {
		return fmt.Errorf("dumping %q: %w", fsPath, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("dumping %q: %w", fsPath, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("dumping %q: changed to %s while being dumped", fsPath, fileType(fi.Mode()))
	}
	size := fi.Size()
	h := &Header{Path: narPath, Type: TypeRegular, Executable: fi.Mode().Perm()&0o100 != 0, Size: size}
	if err := nw.WriteHeader(h); err != nil {
		return fmt.Errorf("dumping %q: %w", fsPath, err)
	}
	for left := size; left > 0; {
		b := buf
		if int64(len(b)) > left {
			b = b[:left]
		}
		n, err := f.Read(b)
		if n > 0 {
			if _, werr := nw.Write(b[:n]); werr != nil {
				return fmt.Errorf("dumping %q: %w", fsPath, werr)
			}
			left -= int64(n)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("dumping %q: file shrank from %d to %d bytes while being dumped", fsPath, size, size-left)
			}
			return fmt.Errorf("dumping %q: %w", fsPath, err)
		}
	}
	return nil
}

func fileType(m fs.FileMode) string {
	switch m.Type() {
	case fs.ModeNamedPipe:
		return "named pipe"
	case fs.ModeSocket:
		return "socket"
	case fs.ModeDevice:
		return "block device"
	case fs.ModeDevice | fs.ModeCharDevice:
		return "character device"
	case fs.ModeDir:
		return "directory"
	case fs.ModeSymlink:
		return "symlink"
	case 0:
		return "regular file"
	}
	return m.Type().String()
}
