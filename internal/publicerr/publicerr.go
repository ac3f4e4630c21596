// Package publicerr separates what an error may tell a client from what
// only the farm's log may hold. An error's whole message is public when
// the code that made it vouches for it: an *Error (New, Wrap); a sentinel
// made with Sentinel or registered with Register (io.EOF and its kind
// are); an error type whose Public method says so; the standard library's
// errors about input bytes (strconv, base64, hex, JSON syntax); or an
// error that wraps only public errors, such as fmt.Errorf("%w for %s:
// declared %d bytes, got %d", ErrSizeMismatch, ...). So text wrapped
// around a public error must be text a client may see, and an error made
// from anything else (a SQL error, an os.PathError naming the state
// directory, a plain errors.New) is not public, nor is anything that
// wraps it.
//
// At each edge where errors reach a client, Message gives the message of
// the outermost public error in the chain; when there is none the client
// gets "internal error (id …); the farm's log has the details", and the
// error is logged in full with error_id.
package publicerr

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
)

// Error is an error whose whole message may be shown to clients.
type Error struct {
	msg string
	err error
}

// New formats a public error, as fmt.Errorf does (with %w). The whole
// message is public, including the text of what it wraps: use it only
// with arguments a client may see.
func New(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{msg: err.Error(), err: err}
}

// Wrap marks err's whole message as public. Wrap(nil) is nil.
func Wrap(err error) error {
	if err == nil {
		return nil
	}
	return &Error{msg: err.Error(), err: err}
}

func (e *Error) Error() string { return e.msg }
func (e *Error) Unwrap() error { return e.err }

// sentinel is a public sentinel error.
type sentinel struct{ msg string }

func (s *sentinel) Error() string { return s.msg }

// Sentinel returns a new sentinel error (compared with errors.Is) whose
// message is public.
func Sentinel(msg string) error { return &sentinel{msg} }

var (
	mu         sync.RWMutex
	registered = map[error]bool{
		io.EOF: true, io.ErrUnexpectedEOF: true, io.ErrClosedPipe: true,
		context.Canceled: true, context.DeadlineExceeded: true,
	}
)

// Register makes existing sentinel errors public, as Sentinel does.
func Register(errs ...error) {
	mu.Lock()
	defer mu.Unlock()
	for _, err := range errs {
		registered[err] = true
	}
}

func isSentinel(err error) bool {
	if _, ok := err.(*sentinel); ok {
		return true
	}
	if !comparable(err) {
		return false
	}
	mu.RLock()
	defer mu.RUnlock()
	return registered[err]
}

// comparable reports whether err can be a map key without panicking.
func comparable(err error) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	_ = map[error]bool{err: true}
	return true
}

// Publicer is implemented by error types that say themselves whether
// their whole message is public (such as a parser's error type).
type Publicer interface{ Public() bool }

func children(err error) []error {
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if c := u.Unwrap(); c != nil {
			return []error{c}
		}
	case interface{ Unwrap() []error }:
		return u.Unwrap()
	}
	return nil
}

// isPublic reports whether err's whole message is public.
func isPublic(err error) bool {
	if p, ok := err.(Publicer); ok && p.Public() {
		return true
	}
	switch err.(type) {
	case *Error:
		return true
	case *strconv.NumError, base64.CorruptInputError, hex.InvalidByteError, *json.SyntaxError, *json.UnmarshalTypeError:
		// The standard library's errors about input bytes: they quote
		// what the client sent, never the farm's files.
		return true
	}
	if isSentinel(err) {
		return true
	}
	cs := children(err)
	for _, c := range cs {
		if !isPublic(c) {
			return false
		}
	}
	return len(cs) > 0
}

// public returns the message of the outermost public error in err's
// chain (a depth-first walk, outermost first).
func public(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	if isPublic(err) {
		return err.Error(), true
	}
	for _, c := range children(err) {
		if msg, ok := public(c); ok {
			return msg, true
		}
	}
	return "", false
}

// Is reports whether err carries a public message.
func Is(err error) bool {
	_, ok := public(err)
	return ok
}

// Message returns what a client may be told of err: its public message,
// or, if it has none, "internal error (id ID); the farm's log has the
// details" with a new ID, which it logs with err in full (error_id=ID)
// and attrs, under msg.
func Message(ctx context.Context, log *slog.Logger, err error, msg string, attrs ...any) string {
	if m, ok := public(err); ok {
		return m
	}
	id := newID()
	if log == nil {
		log = slog.Default()
	}
	// A warning, not an error: most are a peer gone or the farm stopping,
	// and the id finds the rest.
	log.WarnContext(ctx, msg, append(attrs, "error_id", id, "err", err)...)
	return fmt.Sprintf("internal error (id %s); the farm's log has the details", id)
}

func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
