package account

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
)

// Usage is what an account has used so far.
type Usage struct {
	// Builds counts the account's build records (answers from the store
	// included); Running and Queued are its builds under way.
	Builds  int64 `json:"builds"`
	Running int   `json:"running"`
	Queued  int   `json:"queued"`
	// StoredBytes is the NAR size of every path in its view of the store.
	StoredBytes int64 `json:"storedBytes"`
	// Uploads counts the paths it uploaded.
	Uploads int64 `json:"uploads"`
}

// Status is what `nixfarm whoami` shows.
type Status struct {
	Account     string `json:"account"`
	Fingerprint string `json:"fingerprint"`
	// Managed says whether the account is in the database (`nixfarm
	// accounts add`), rather than only in the authorized_keys file.
	Managed bool   `json:"managed"`
	Limits  Limits `json:"limits"`
	Usage   Usage  `json:"usage"`
	// SigningKey is the public half of the account's own signing key
	// (signing.go), which signs what the farm built for it from
	// derivations it could not check.
	SigningKey string `json:"signingKey,omitempty"`
}

// Status returns an account's limits and the usage the database knows
// (the caller fills in Running and Queued).
func (s *Service) Status(ctx context.Context, account, fingerprint string) (*Status, error) {
	st := &Status{Account: account, Fingerprint: fingerprint}
	st.Managed = exists(ctx, s.db, account) == nil
	s.forget(account)
	st.Limits = s.Limits(ctx, account)
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM builds WHERE account = ?`, account).Scan(&st.Usage.Builds); err != nil {
		return nil, fmt.Errorf("counting builds: %w", err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM views WHERE account = ? AND how = 'upload'`, account).Scan(&st.Usage.Uploads); err != nil {
		return nil, fmt.Errorf("counting uploads: %w", err)
	}
	var err error
	if st.Usage.StoredBytes, err = s.StoredBytes(ctx, account); err != nil {
		return nil, err
	}
	return st, nil
}

// WriteText renders the status for people.
func (st *Status) WriteText(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "account:      %s\n", st.Account)
	fmt.Fprintf(&b, "key:          %s\n", st.Fingerprint)
	if !st.Managed {
		fmt.Fprintf(&b, "              (from the farm's authorized_keys file)\n")
	}
	if st.SigningKey != "" {
		fmt.Fprintf(&b, "signing key:  %s\n", st.SigningKey)
		fmt.Fprintf(&b, "              (signs what the farm built for you as a remote builder; trust it\n")
		fmt.Fprintf(&b, "              in trusted-public-keys to fetch those outputs from the farm's cache)\n")
	}
	fmt.Fprintf(&b, "builds:       %d in all, %d running, %d queued\n", st.Usage.Builds, st.Usage.Running, st.Usage.Queued)
	fmt.Fprintf(&b, "stored:       %s (%d bytes)\n", FormatSize(st.Usage.StoredBytes), st.Usage.StoredBytes)
	fmt.Fprintf(&b, "uploads:      %d paths\n", st.Usage.Uploads)
	fmt.Fprintf(&b, "limits:\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, which := range AllLimits() {
		from := "account"
		if st.Limits.IsDefault(which) {
			from = "default"
		}
		fmt.Fprintf(tw, "  %s\t%s\t(%s)\n", which.Name(), which.Format(st.Limits.Get(which)), from)
	}
	tw.Flush()
	_, err := w.Write(b.Bytes())
	return err
}

// LimitLog returns w cut off at account's log limit (max-log-size): past
// it, a marker line is written once and the rest is dropped, while the
// build goes on. Without a limit it returns w.
func (s *Service) LimitLog(account string, w io.Writer) io.Writer {
	limit := s.Limits(context.Background(), account).Get(LogSize)
	if limit <= 0 || w == nil {
		return w
	}
	return NewLogLimit(w, limit)
}

// NewLogLimit returns w cut off after max bytes, at a line end when one
// fits, with a marker line naming the limit.
func NewLogLimit(w io.Writer, max int64) io.Writer {
	return &logLimit{w: w, left: max, max: max, nl: true}
}

type logLimit struct {
	mu   sync.Mutex
	w    io.Writer
	left int64
	max  int64
	nl   bool // the last byte written ends a line
	cut  bool
}

// Write never fails, so the build goes on whatever happens to its log.
func (l *logLimit) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut || len(p) == 0 {
		return len(p), nil
	}
	if int64(len(p)) <= l.left {
		l.left -= int64(len(p))
		l.w.Write(p)
		l.nl = p[len(p)-1] == '\n'
		return len(p), nil
	}
	part := p[:l.left]
	if i := bytes.LastIndexByte(part, '\n'); i >= 0 {
		part = part[:i+1]
	} else if l.nl {
		part = nil // a line that does not fit is not started
	}
	if len(part) > 0 {
		l.w.Write(part)
		l.nl = part[len(part)-1] == '\n'
	}
	marker := fmt.Sprintf("nixfarm: log truncated at %s (the account's log limit, max-log-size)\n", FormatSize(l.max))
	if !l.nl {
		marker = "\n" + marker
	}
	l.w.Write([]byte(marker))
	l.cut = true
	return len(p), nil
}
