package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Content is content-addressed data to add under a path computed from it.
type Content struct {
	Name   string
	Method storepath.CAMethod
	Algo   nixhash.Algo
	// References are the other paths the data refers to.
	References []storepath.Path
	// Data is the file's contents for the Text and Flat methods, and a NAR
	// for Recursive.
	Data    io.Reader
	Account string
}

// AddContent adds content-addressed data, as `nix-store --add` or
// builtins.toFile do: the store path comes from the data's hash. The data
// is spooled to a temporary file in tmpDir ("" = the system's) first,
// since its hash is needed before it can be stored.
func AddContent(ctx context.Context, s Store, tmpDir string, c Content) (*PathInfo, error) {
	if c.Method == storepath.Text && c.Algo != nixhash.SHA256 {
		return nil, publicerr.New("adding %s: text content is hashed with sha256, not %s", c.Name, c.Algo)
	}
	if c.Algo.Size() == 0 {
		return nil, publicerr.New("adding %s: unknown hash algorithm", c.Name)
	}
	spool, err := os.CreateTemp(tmpDir, "content-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	h := c.Algo.New()
	var size int64
	if c.Method == storepath.Recursive {
		size, err = nar.Copy(io.MultiWriter(spool, h), c.Data)
	} else {
		size, err = io.Copy(io.MultiWriter(spool, h), c.Data)
	}
	if err != nil {
		return nil, fmt.Errorf("reading content of %s: %w", c.Name, err)
	}
	ca := storepath.ContentAddress{Method: c.Method, Hash: nixhash.FromDigest(c.Algo, h)}
	p, err := ca.Path(c.Name, c.References, false)
	if err != nil {
		return nil, err
	}
	if info, err := s.QueryPathInfo(ctx, p); err == nil {
		return info, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	narSrc := io.Reader(spool)
	if c.Method != storepath.Recursive {
		pr := fileNar(spool, size)
		defer pr.Close() // ends the writer if the store stops reading early
		narSrc = pr
	}
	info := &PathInfo{Path: p, CA: ca.String(), References: c.References, Account: c.Account}
	if err := s.AddToStore(ctx, info, narSrc); err != nil {
		return nil, err
	}
	return s.QueryPathInfo(ctx, p)
}

// fileNar streams the NAR of a single regular file.
func fileNar(contents io.Reader, size int64) *io.PipeReader {
	pr, pw := io.Pipe()
	go func() {
		w := nar.NewWriter(pw)
		err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: size})
		if err == nil {
			_, err = io.Copy(w, contents)
		}
		if err == nil {
			err = w.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}
