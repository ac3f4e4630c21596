package account_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func pathOf(name string, c byte) storepath.Path {
	return storepath.Path(storepath.Dir + "/" + strings.Repeat(string(c), 32) + "-" + name)
}

// add uploads a file of n bytes through st; declared says whether its
// size and hash are given.
func add(st store.Store, p storepath.Path, n int, declared bool) error {
	nar := testutil.FileNar(strings.Repeat("x", n))
	info := &store.PathInfo{Path: p}
	if declared {
		info.NarHash, info.NarSize = nixhash.SHA256Of(nar), uint64(len(nar))
	}
	return st.AddToStore(context.Background(), info, bytes.NewReader(nar))
}

func limitMsg(t *testing.T, err error, want ...string) {
	t.Helper()
	var le *build.LimitError
	if !errors.As(err, &le) {
		t.Fatalf("error %v is not a limit error", err)
	}
	for _, w := range want {
		if !strings.Contains(le.Msg, w) {
			t.Errorf("message %q lacks %q", le.Msg, w)
		}
	}
}

func TestViewLimits(t *testing.T) {
	ctx := context.Background()
	ts, d, _ := testutil.Store(t)
	s := account.New(d, account.DefaultValues(), nil)
	s.Add(ctx, "alice")
	upload, stored := int64(4096), int64(10000)
	if err := s.SetLimits(ctx, "alice", map[account.Limit]*int64{account.UploadSize: &upload, account.StoredBytes: &stored}); err != nil {
		t.Fatal(err)
	}
	uploads := &account.Views{Store: ts.Local, Accounts: s, Size: account.UploadSize}
	st := uploads.For("alice")

	// Over the upload limit, declared: refused before reading.
	err := add(st, pathOf("big", 'a'), 8000, true)
	limitMsg(t, err, "upload of "+string(pathOf("big", 'a'))+" refused", "is over the account's upload limit", "(max-upload-size = 4 KiB)")
	// Undeclared: cut off while it streams.
	err = add(st, pathOf("big2", 'b'), 8000, false)
	limitMsg(t, err, "(max-upload-size = 4 KiB)")
	if v, _ := st.ValidPaths(ctx, []storepath.Path{pathOf("big", 'a'), pathOf("big2", 'b')}); len(v) != 0 {
		t.Errorf("registered over the limit: %v", v)
	}
	// Under it: fine, twice (the second add of a path it has is no add).
	for i := 0; i < 2; i++ {
		if err := add(st, pathOf("ok1", 'c'), 3500, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := add(st, pathOf("ok2", 'd'), 3500, true); err != nil {
		t.Fatal(err)
	}
	used, _ := s.StoredBytes(ctx, "alice")
	if used < 7000 || used > 7400 {
		t.Fatalf("stored bytes %d", used)
	}
	// A third takes alice over 10000 stored bytes.
	err = add(st, pathOf("ok3", 'e'), 3500, true)
	limitMsg(t, err, "would take the account's stored bytes", "(max-stored-bytes = 9.8 KiB)")
	// Undeclared, cut at what is left.
	err = add(st, pathOf("ok4", 'f'), 3500, false)
	limitMsg(t, err, "stored-bytes", "(max-stored-bytes = 9.8 KiB)")
	// Another account has the defaults.
	if err := add(uploads.For("bob"), pathOf("big", 'a'), 8000, true); err != nil {
		t.Errorf("bob: %v", err)
	}

	// Outputs have their own limit, and Expect still works through the
	// wrapper.
	out := int64(1000)
	s.SetLimits(ctx, "alice", map[account.Limit]*int64{account.OutputSize: &out, account.StoredBytes: nil})
	outputs := &account.Views{Store: ts.Local, Accounts: s, Size: account.OutputSize}
	ost := outputs.For("alice")
	if _, ok := ost.(store.Expecter); !ok {
		t.Error("the limited view lost Expect")
	}
	checker := ost.(interface {
		CheckAdd(context.Context, *store.PathInfo) error
	})
	err = checker.CheckAdd(ctx, &store.PathInfo{Path: pathOf("out", 'g'), NarSize: 2000})
	limitMsg(t, err, "output "+string(pathOf("out", 'g'))+" refused", "2 KiB is over the account's output limit (max-output-size = 1000 B)")
	if err := add(ost, pathOf("small-out", 'h'), 500, true); err != nil {
		t.Errorf("small output: %v", err)
	}
	err = checker.CheckAdd(ctx, &store.PathInfo{Path: pathOf("out", 'g'), NarSize: 1001})
	limitMsg(t, err, "1001 B is over")
}

func TestLogLimit(t *testing.T) {
	var b bytes.Buffer
	w := account.NewLogLimit(&b, 20)
	for _, line := range []string{"0123456789\n", "abcdefgh\n", "this line does not fit\n", "nor this\n"} {
		if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	want := "0123456789\nabcdefgh\nnixfarm: log truncated at 20 B (the account's log limit, max-log-size)\n"
	if b.String() != want {
		t.Errorf("log %q, want %q", b.String(), want)
	}
	// Through the service, by account.
	ctx := context.Background()
	_, d, _ := testutil.Store(t)
	s := account.New(d, account.DefaultValues(), nil)
	s.Add(ctx, "alice")
	small := int64(1 << 10)
	s.SetLimits(ctx, "alice", map[account.Limit]*int64{account.LogSize: &small})
	b.Reset()
	lw := s.LimitLog("alice", &b)
	for i := 0; i < 100; i++ {
		lw.Write([]byte(strings.Repeat("y", 99) + "\n"))
	}
	if b.Len() > 1<<10+100 || !strings.HasSuffix(b.String(), "nixfarm: log truncated at 1 KiB (the account's log limit, max-log-size)\n") {
		t.Errorf("alice's log: %d bytes, ending %q", b.Len(), b.String()[max(0, b.Len()-100):])
	}
}

func TestStatus(t *testing.T) {
	ctx := context.Background()
	ts, d, _ := testutil.Store(t)
	s := account.New(d, account.DefaultValues(), nil)
	s.Add(ctx, "alice")
	two := int64(2)
	s.SetLimits(ctx, "alice", map[account.Limit]*int64{account.ConcurrentBuilds: &two})
	if err := add(ts.Local.For("alice"), pathOf("x", 'a'), 100, true); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Exec(`INSERT INTO builds (drv_path, account, status, queued_at) VALUES ('d', 'alice', 0, 0)`); err != nil {
		t.Fatal(err)
	}
	st, err := s.Status(ctx, "alice", "SHA256:abc")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Managed || st.Usage.Builds != 1 || st.Usage.Uploads != 1 || st.Usage.StoredBytes < 100 {
		t.Errorf("status %+v", st)
	}
	var b bytes.Buffer
	st.WriteText(&b)
	for _, want := range []string{"account:      alice", "SHA256:abc", "max-concurrent-builds  2          (account)", "max-log-size           64 MiB     (default)", "1 in all"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("whoami lacks %q:\n%s", want, b.String())
		}
	}
}
