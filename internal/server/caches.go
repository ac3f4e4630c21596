package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/nixfarm/nixfarm/internal/binarycache"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/substituter"
)

// Binary caches both ways: the farm fetches from upstream caches what
// it lacks (package substituter), and serves its store as one (package
// binarycache) under --http-listen.

// DefaultSubstituter and DefaultTrustedPublicKey are Nix's own defaults.
const (
	DefaultSubstituter      = "https://cache.nixos.org"
	DefaultTrustedPublicKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
)

// initUpstream sets up the upstream caches: what they serve is
// registered in the farm's upstream view, and every account trusts their
// keys unless it untrusts one.
func (f *Farm) initUpstream() error {
	keys := make([]signature.PublicKey, 0, len(f.cfg.TrustedPublicKeys))
	for _, k := range f.cfg.TrustedPublicKeys {
		pk, err := signature.ParsePublicKey(k)
		if err != nil {
			return fmt.Errorf("--trusted-public-key %q: %w", k, err)
		}
		keys = append(keys, pk)
	}
	f.upstreamKeys = keys
	f.accounts.SetUpstreamKeys(keys)
	if len(f.cfg.Substituters) == 0 {
		return nil
	}
	if len(keys) == 0 {
		f.log.Warn("substituters are set but no --trusted-public-key: only content-addressed paths can be fetched", "substituters", f.cfg.Substituters)
	}
	sub, err := substituter.New(substituter.Config{
		URLs:  f.cfg.Substituters,
		Keys:  keys,
		Store: f.store.For(store.UpstreamAccount),
		Log:   f.log,

		Metrics: f.metrics,
	})
	if err != nil {
		return fmt.Errorf("--substituter: %w", err)
	}
	f.substituter = sub
	f.log.Info("substituting from upstream caches", "substituters", f.cfg.Substituters, "trusted_keys", len(keys))
	return nil
}

// binaryCache is the handler of the farm store as a binary cache: each
// account reads its own view with a token (nixfarm accounts token), and
// with --public-cache anyone reads what the farm signed or its upstream
// keys did.
func (f *Farm) binaryCache() (http.Handler, error) {
	var public store.Store
	if f.cfg.PublicCache {
		keys := append([]signature.PublicKey{f.signingKey}, f.upstreamKeys...)
		public = f.store.For(store.PublicAccount).(*store.View).WithTrustedKeys(keys)
	}
	return binarycache.New(binarycache.Config{
		View:        f.uploads.For,
		Public:      public,
		Auth:        binarycache.NewTokenAuth(f.accounts, 0, nil),
		Logs:        buildLogs{f.coord},
		Dir:         filepath.Join(f.cfg.StateDir, "cache"),
		Compression: f.cfg.CacheCompression,
		Generation:  f.store.Generation,
		Metrics:     f.metrics,
		Log:         f.log,
	})
}

// buildLogs gives the binary cache the logs of the builds the farm ran
// for an account (/log/<drv>).
type buildLogs struct{ c *coordinator.Coordinator }

func (l buildLogs) Open(ctx context.Context, account string, drvPath storepath.Path) (io.ReadCloser, error) {
	return l.c.OpenLog(ctx, account, drvPath)
}

// printCacheInstructions tells how to use the upstream caches and the
// farm's own binary cache.
func (f *Farm) printCacheInstructions(w io.Writer, host string) {
	if len(f.cfg.Substituters) > 0 {
		fmt.Fprintf(w, "\nThe farm fetches from these upstream caches what builds need, and what they\nhave is not built: %s\n", strings.Join(f.cfg.Substituters, " "))
	} else {
		fmt.Fprintf(w, "\nThe farm has no upstream caches (--substituter): it builds everything.\n")
	}
	if f.httpLn == nil {
		return
	}
	h, port, _ := net.SplitHostPort(f.httpLn.Addr().String())
	where := "put TLS in front of it to\nserve it beyond this machine"
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		// Listening on loopback only (the default): name that address.
		host = h
		where = "this machine only: --http-listen\n:2280 serves it to others, best behind TLS"
	}
	fmt.Fprintf(w, `
The farm's store is a binary cache at http://%[1]s:%[2]s/ (%[5]s). Each account
reads its own paths with a token:

   nixfarm accounts token alice --host %[1]s --state-dir %[3]s

and, on alice's machines, in nix.conf (her key is in "ssh nixfarm nixfarm whoami"):

   extra-substituters = http://%[1]s:%[2]s
   extra-trusted-public-keys = %[4]s nixfarm-alice-1:...
   netrc-file = /etc/nix/netrc    # the line "nixfarm accounts token" prints
`, host, port, f.cfg.StateDir, f.signingKey, where)
}
