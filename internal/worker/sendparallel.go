package worker

import (
	"context"
	"fmt"
	"sync"

	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Parallel input copies. A `nix-store --serve` session adds one path at a
// time, and the machine's Nix spends most of each add hashing and writing
// it, so a large input closure (a toolchain fetched from an upstream
// cache, say) copies far faster over several sessions at once: each path
// goes to whichever session is free, once the paths it refers to are in.

const (
	// copySessions is how many sessions copy a large closure at once
	// (the build's own and copySessions-1 more).
	copySessions = 4
	// parallelMinPaths and parallelMinBytes make a closure large: below
	// either, starting more sessions costs more than it saves.
	parallelMinPaths = 8
	parallelMinBytes = 16 << 20
)

// sendAll adds sorted (dependencies first) to the machine, over extra
// sessions too when the closure is large.
func (s *session) sendAll(ctx context.Context, sorted []*store.PathInfo) error {
	var size uint64
	for _, info := range sorted {
		size += info.NarSize
	}
	if len(sorted) < parallelMinPaths || size < parallelMinBytes {
		for _, info := range sorted {
			if err := s.sendOne(ctx, s.client, info); err != nil {
				return err
			}
		}
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Each path's own channel closes once it is in.
	sent := make(map[storepath.Path]chan struct{}, len(sorted))
	for _, info := range sorted {
		sent[info.Path] = make(chan struct{})
	}
	work := make(chan *store.PathInfo)
	var wg sync.WaitGroup
	copyOver := func(client *serveproto.Client) {
		defer wg.Done()
		for info := range work {
			// Its references were handed out earlier, to sessions that
			// need nothing handed out later: waiting cannot deadlock.
			for _, r := range info.References {
				if ch, ok := sent[r]; ok && r != info.Path {
					select {
					case <-ch:
					case <-ctx.Done():
						return
					}
				}
			}
			if err := s.sendOne(ctx, client, info); err != nil {
				cancel(err)
				return
			}
			close(sent[info.Path])
		}
	}
	wg.Add(1)
	go copyOver(s.client)
	var extra []*conn
	for range min(copySessions-1, len(sorted)/parallelMinPaths) {
		c, err := s.e.dial(ctx, 0)
		if err != nil {
			// The build's own session copies on; more would only help.
			s.e.log.Debug("could not start another session to copy inputs", "err", err)
			break
		}
		stop := context.AfterFunc(ctx, c.kill)
		defer stop()
		extra = append(extra, c)
		wg.Add(1)
		go copyOver(c.client)
	}
feed:
	for _, info := range sorted {
		select {
		case work <- info:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	for _, c := range extra {
		if err := c.close(); err != nil && context.Cause(ctx) == nil {
			s.e.log.Debug("a session copying inputs ended uncleanly", "err", err)
		}
	}
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("copying inputs: %w", err)
	}
	return nil
}
