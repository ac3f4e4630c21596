package records

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/buildlog"
	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// The logs of the records' builds (package buildlog keeps them): what
// `nixfarm logs`, its SSH command and GET /api/v1/builds/{id}/log read.

// PollInterval is how often a follower of a build's log looks at its
// record to learn whether it ended.
const PollInterval = 250 * time.Millisecond

// Find returns the record arg names, if v may see it: a build id, or a
// derivation path (its latest build v may see).
func (s *Service) Find(ctx context.Context, v Viewer, arg string) (*Record, error) {
	if id, err := strconv.ParseInt(arg, 10, 64); err == nil {
		if id <= 0 {
			return nil, publicerr.New("invalid build id %q", arg)
		}
		return s.Get(ctx, v, id)
	}
	if !strings.HasPrefix(arg, "/") || !strings.HasSuffix(arg, ".drv") {
		return nil, publicerr.New("%q is neither a build id nor a derivation path (/nix/store/...drv)", arg)
	}
	q, args := `SELECT id FROM builds WHERE drv_path = ?`, []any{arg}
	if !v.Admin {
		q, args = q+` AND account = ?`, append(args, v.Account)
	}
	var id int64
	err := s.db.QueryRowContext(ctx, q+` ORDER BY id DESC LIMIT 1`, args...).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w of %s", ErrNotFound, arg)
	}
	if err != nil {
		return nil, fmt.Errorf("finding the builds of %s: %w", arg, err)
	}
	return s.Get(ctx, v, id)
}

// OpenLog returns the log of build id as it is now: all of it if the
// build ended, what was written so far if it runs (nothing if it has
// not started).
func (s *Service) OpenLog(id int64) (io.ReadCloser, error) {
	r, err := buildlog.Open(LogPath(s.logDir, id))
	if errors.Is(err, os.ErrNotExist) {
		return io.NopCloser(strings.NewReader("")), nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening the log of build %d: %w", id, err)
	}
	return r, nil
}

// OpenLogAt is OpenLog from offset in the (decompressed) log, and where
// it starts: offset, or the end of the log so far if that is shorter.
func (s *Service) OpenLogAt(id, offset int64) (io.ReadCloser, int64, error) {
	r, start, err := buildlog.OpenAt(LogPath(s.logDir, id), offset)
	if errors.Is(err, os.ErrNotExist) {
		return io.NopCloser(strings.NewReader("")), 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("opening the log of build %d at %d: %w", id, offset, err)
	}
	return r, start, nil
}

// FollowLog streams the log of build id as it is written, until the
// build ends (its record says so) and the whole log is read, or ctx
// ends. changed, if not nil, is called with the record each time its
// status changes, and with the last one.
func (s *Service) FollowLog(ctx context.Context, id int64, changed func(*Record)) io.ReadCloser {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last Status
		t := time.NewTicker(PollInterval)
		defer t.Stop()
		for {
			r, err := s.Get(ctx, Viewer{Admin: true}, id)
			if err == nil && r.Status != last {
				last = r.Status
				if changed != nil {
					changed(r)
				}
			}
			if err == nil && r.Status.Final() || errors.Is(err, ErrNotFound) {
				return // the build ended (or its record was pruned)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return &followed{ReadCloser: buildlog.Follow(ctx, LogPath(s.logDir, id), done), cancel: cancel, done: done}
}

type followed struct {
	io.ReadCloser
	cancel context.CancelFunc
	done   <-chan struct{}
}

func (f *followed) Close() error {
	f.cancel()
	<-f.done
	return f.ReadCloser.Close()
}

// WriteLog writes the log of the build arg names (see Find) to out; with
// follow, as it is written until the build ends, telling notes while it
// waits in the queue. It returns the build's record: as it ended, if
// following.
func (s *Service) WriteLog(ctx context.Context, v Viewer, arg string, follow bool, out, notes io.Writer) (*Record, error) {
	rec, err := s.Find(ctx, v, arg)
	if err != nil {
		return nil, err
	}
	var r io.ReadCloser
	if !follow {
		if !rec.Status.Final() {
			fmt.Fprintf(notes, "nixfarm: build %d is %s: this is its log so far (--follow streams the rest)\n", rec.ID, rec.Status)
		}
		if r, err = s.OpenLog(rec.ID); err != nil {
			return nil, err
		}
	} else {
		r = s.FollowLog(ctx, rec.ID, func(now *Record) {
			switch now.Status {
			case Queued:
				fmt.Fprintf(notes, "nixfarm: build %d (%s) is waiting in the queue\n", now.ID, now.DrvName())
			case Running:
				if rec.Status == Queued && now.Worker != "" {
					fmt.Fprintf(notes, "nixfarm: build %d started on %s\n", now.ID, now.Worker)
				} else if rec.Status == Queued {
					fmt.Fprintf(notes, "nixfarm: build %d started\n", now.ID)
				}
			}
			rec = now
		})
	}
	_, err = io.Copy(out, r)
	r.Close() // after which rec is the last record seen
	if err != nil {
		return rec, fmt.Errorf("reading the log of build %d: %w", rec.ID, err)
	}
	return rec, nil
}

// Succeeded reports whether the build ended with its outputs: built,
// substituted or in the store already.
func (s Status) Succeeded() bool { return s == Built || s == Substituted || s == Cached }

// ParseLogArgs parses the arguments of `nixfarm logs`: one build (an id
// or a derivation path) and the flags fs defines, --follow among them,
// in any order.
func ParseLogArgs(fs *flag.FlagSet, args []string) (follow *bool, parse func() (string, error)) {
	follow = fs.Bool("follow", false, "stream the log of a build under way until it ends; exit 0 if it succeeded, 1 if not")
	return follow, func() (string, error) {
		var pos []string
		for {
			if err := fs.Parse(args); err != nil {
				return "", err
			}
			if fs.NArg() == 0 {
				break
			}
			pos = append(pos, fs.Arg(0))
			args = fs.Args()[1:]
		}
		if len(pos) != 1 {
			return "", publicerr.New("give one build: its id (nixfarm builds) or its derivation path")
		}
		return pos[0], nil
	}
}
