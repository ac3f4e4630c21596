package account

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Views gives each account its view of the farm store, refusing adds that
// go over the account's limits: the size of one NAR (Size: UploadSize for
// what clients upload, OutputSize for what builds output) and the bytes
// of the account's whole view (StoredBytes). A refusal is a
// *build.LimitError naming the limit and its value.
//
// A NAR whose size is declared is refused before a byte of it is read;
// one whose size is not is cut off when it goes over. The stored-bytes
// check adds a NAR's size to what the view held before the add, so adds
// running at once may together go somewhat over.
type Views struct {
	Store    store.Views
	Accounts *Service
	Size     Limit
}

var _ store.Views = (*Views)(nil)

// For implements store.Views.
func (v *Views) For(account string) store.Store {
	st := v.Store.For(account)
	view, ok := st.(*store.View)
	if !ok {
		return st
	}
	if keys := v.Accounts.TrustedKeys(context.Background(), account); len(keys) > 0 {
		view = view.WithTrustedKeys(keys)
	}
	return &limitedView{View: view, views: v, account: account}
}

// limitedView is one account's view with its limits. Embedding the View
// keeps every other method, Expect included.
type limitedView struct {
	*store.View
	views   *Views
	account string
}

// AddToStore implements store.Store.
func (l *limitedView) AddToStore(ctx context.Context, info *store.PathInfo, nar io.Reader) error {
	limit, which, err := l.admit(ctx, info)
	if err != nil {
		return err
	}
	v := l.View
	if limit > 0 {
		v = v.WithMaxNarSize(limit)
	}
	err = v.AddToStore(ctx, info, nar)
	if errors.Is(err, store.ErrTooLarge) {
		lim := l.views.Accounts.Limits(ctx, l.account)
		if which == StoredBytes {
			return l.refuse(info.Path, "its NAR would take the account over its stored-bytes limit", StoredBytes, lim.Get(StoredBytes))
		}
		return l.refuse(info.Path, fmt.Sprintf("its NAR is over the account's %s limit", l.kind()), which, lim.Get(which))
	}
	return err
}

// CheckAdd refuses, before anything is read, an add of info that would go
// over a limit, as far as its declared size tells.
func (l *limitedView) CheckAdd(ctx context.Context, info *store.PathInfo) error {
	_, _, err := l.admit(ctx, info)
	return err
}

// admit checks info's declared size against the limits and returns the
// most the NAR may hold (0: no limit) and which limit that is.
func (l *limitedView) admit(ctx context.Context, info *store.PathInfo) (int64, Limit, error) {
	lim := l.views.Accounts.Limits(ctx, l.account)
	maxSize, maxStored := lim.Get(l.views.Size), lim.Get(StoredBytes)
	if maxSize <= 0 && maxStored <= 0 {
		return 0, l.views.Size, nil
	}
	// A path the account has already is not added again (its NAR is read
	// and dropped), so no limit applies.
	if valid, err := l.View.ValidPaths(ctx, []storepath.Path{info.Path}); err != nil {
		return 0, 0, err
	} else if len(valid) == 1 {
		return 0, l.views.Size, nil
	}
	size := int64(info.NarSize)
	if maxSize > 0 && size > maxSize {
		return 0, 0, l.refuse(info.Path, fmt.Sprintf("%s is over the account's %s limit", sizeOver(size, maxSize), l.kind()), l.views.Size, maxSize)
	}
	limit, which := maxSize, l.views.Size
	if maxStored > 0 {
		used, err := l.views.Accounts.StoredBytes(ctx, l.account)
		if err != nil {
			return 0, 0, err
		}
		if size > 0 && used+size > maxStored {
			return 0, 0, l.refuse(info.Path, fmt.Sprintf("its %s would take the account's stored bytes from %s to %s, over its limit",
				FormatSize(size), sizeOver(used, maxStored), sizeOver(used+size, maxStored)), StoredBytes, maxStored)
		}
		left := maxStored - used
		if left <= 0 {
			return 0, 0, l.refuse(info.Path, fmt.Sprintf("the account stores %s already, its limit", FormatSize(used)), StoredBytes, maxStored)
		}
		if limit <= 0 || left < limit {
			limit, which = left, StoredBytes
		}
	}
	return limit, which, nil
}

func (l *limitedView) kind() string {
	if l.views.Size == OutputSize {
		return "output"
	}
	return "upload"
}

func (l *limitedView) refuse(p storepath.Path, why string, which Limit, value int64) error {
	what := "upload of " + string(p)
	if l.views.Size == OutputSize {
		what = "output " + string(p)
	}
	return &build.LimitError{Msg: fmt.Sprintf("%s refused: %s (%s = %s); the farm's operator can raise it: nixfarm accounts set-limits ACCOUNT --%s N",
		what, why, which.Name(), which.Format(value), which.Name())}
}

// StoredBytes returns the NAR bytes of every path in account's view.
func (s *Service) StoredBytes(ctx context.Context, account string) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT coalesce(sum(o.nar_size), 0) FROM views v JOIN objects o ON o.id = v.object
		WHERE v.account = ?`, account).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("summing the stored bytes of %s: %w", account, err)
	}
	return n, nil
}

// sizeOver renders size, in bytes if its rounded form would read as the
// limit's.
func sizeOver(size, limit int64) string {
	if size != limit && FormatSize(size) == FormatSize(limit) {
		return fmt.Sprintf("%d bytes", size)
	}
	return FormatSize(size)
}
