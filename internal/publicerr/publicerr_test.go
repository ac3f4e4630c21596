package publicerr_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

var errNotFound = publicerr.Sentinel("path is not in the farm store")

type parseError struct{}

func (parseError) Error() string { return "at byte 3: expected '('" }
func (parseError) Public() bool  { return true }

func TestMessage(t *testing.T) {
	sql := errors.New("SQL logic error: no such table: paths (1)")
	const p = "/nix/store/00000000000000000000000000000000-x"
	for _, tc := range []struct {
		name string
		err  error
		want string // "" = hidden behind an id
	}{
		{"sentinel", errNotFound, "path is not in the farm store"},
		{"sentinel with detail", fmt.Errorf("%w: %s", errNotFound, p), "path is not in the farm store: " + p},
		{"wrapped public chain", fmt.Errorf("QueryPathInfo: reading paths: %w", fmt.Errorf("%w: %s", errNotFound, p)),
			"QueryPathInfo: reading paths: path is not in the farm store: " + p},
		{"New", publicerr.New("unknown build mode %d", 7), "unknown build mode 7"},
		{"New wrapping", fmt.Errorf("x: %w", publicerr.New("y: %w", io.ErrUnexpectedEOF)), "x: y: unexpected EOF"},
		{"registered", fmt.Errorf("reading narSize: %w", io.ErrUnexpectedEOF), "reading narSize: unexpected EOF"},
		{"Publicer", fmt.Errorf("derivation: %w", parseError{}), "derivation: at byte 3: expected '('"},
		{"input error", fmt.Errorf("narSize: %w", &strconv.NumError{Func: "ParseUint", Num: "x", Err: strconv.ErrSyntax}), `narSize: strconv.ParseUint: parsing "x": invalid syntax`},
		{"SQL", fmt.Errorf("querying %s: %w", p, sql), ""},
		{"state dir", fmt.Errorf("open /var/lib/nixfarm/nars/x.nar: %w", errors.New("permission denied")), ""},
		{"plain", errors.New("something"), ""},
		// A public error wrapped with an internal one: only the public part.
		{"sentinel beside SQL", fmt.Errorf("%w: %w", errNotFound, sql), "path is not in the farm store"},
		// Internal text wrapped around a public error: the public error.
		{"internal wrapper", fmt.Errorf("db /var/lib/nixfarm/state.db: %w; %w", sql, fmt.Errorf("%w: %s", errNotFound, p)), "path is not in the farm store: " + p},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			got := publicerr.Message(context.Background(), slog.New(slog.NewTextHandler(&log, nil)), tc.err, "operation failed", "op", "X")
			if tc.want != "" {
				if got != tc.want || log.Len() != 0 || !publicerr.Is(tc.err) {
					t.Errorf("got %q (logged %q), want %q", got, log.String(), tc.want)
				}
				return
			}
			if publicerr.Is(tc.err) {
				t.Errorf("Is(%v) = true", tc.err)
			}
			m := regexp.MustCompile(`^internal error \(id ([0-9a-f]{8})\); the farm's log has the details$`).FindStringSubmatch(got)
			if m == nil {
				t.Fatalf("the client is told %q", got)
			}
			line := log.String()
			if !strings.Contains(line, "error_id="+m[1]) || !strings.Contains(line, "op=X") || !strings.Contains(line, strings.ReplaceAll(tc.err.Error(), `"`, `\"`)) {
				t.Errorf("log line %q lacks the id, the attributes or the error", line)
			}
		})
	}
}

func TestIDsDiffer(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := publicerr.Message(context.Background(), log, errors.New("x"), "m")
	b := publicerr.Message(context.Background(), log, errors.New("x"), "m")
	if a == b {
		t.Errorf("two errors, one id: %q", a)
	}
}

func TestSentinelIs(t *testing.T) {
	err := fmt.Errorf("%w: detail", errNotFound)
	if !errors.Is(err, errNotFound) || errors.Is(err, publicerr.Sentinel("path is not in the farm store")) {
		t.Error("sentinels compare by identity")
	}
	if !errors.Is(publicerr.New("a: %w", errNotFound), errNotFound) || publicerr.Wrap(nil) != nil {
		t.Error("New keeps what it wraps; Wrap(nil) is nil")
	}
}
