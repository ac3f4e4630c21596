package records_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/buildlog"
	"github.com/nixfarm/nixfarm/internal/records"
)

func TestFind(t *testing.T) {
	d, logs := newDB(t, sample())
	s := records.New(d, logs, nil)
	ctx := context.Background()
	alice := records.Viewer{Account: "alice"}
	hello := "/nix/store/" + strings.Repeat("a", 32) + "-hello.drv"
	if r, err := s.Find(ctx, alice, hello); err != nil || r.ID != 1 {
		t.Errorf("alice's hello: %+v, %v", r, err)
	}
	if r, err := s.Find(ctx, records.Viewer{Admin: true}, hello); err != nil || r.ID != 3 {
		t.Errorf("the latest hello: %+v, %v", r, err)
	}
	if r, err := s.Find(ctx, alice, "2"); err != nil || r.DrvName() != "broken" {
		t.Errorf("build 2: %+v, %v", r, err)
	}
	if _, err := s.Find(ctx, alice, "3"); !errors.Is(err, records.ErrForbidden) {
		t.Errorf("bob's build as alice: %v", err)
	}
	for _, arg := range []string{"/nix/store/" + strings.Repeat("a", 32) + "-secret.drv", "99"} {
		if _, err := s.Find(ctx, alice, arg); !errors.Is(err, records.ErrNotFound) {
			t.Errorf("%s as alice: %v", arg, err)
		}
	}
	for _, arg := range []string{"0", "-1", "hello", "/etc/passwd"} {
		if _, err := s.Find(ctx, alice, arg); err == nil {
			t.Errorf("%q found", arg)
		}
	}
}

func TestParseLogArgs(t *testing.T) {
	for _, c := range []struct {
		args   []string
		arg    string
		follow bool
	}{
		{[]string{"12"}, "12", false},
		{[]string{"12", "--follow"}, "12", true},
		{[]string{"--follow", "12"}, "12", true},
		{[]string{"12", "13"}, "", false},
		{[]string{}, "", false},
	} {
		fs := flag.NewFlagSet("logs", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		follow, parse := records.ParseLogArgs(fs, c.args)
		arg, err := parse()
		if arg != c.arg || *follow != c.follow || (err == nil) != (c.arg != "") {
			t.Errorf("%q: %q follow=%v %v", c.args, arg, *follow, err)
		}
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Following a queued build: a note while it waits, its log as it is
// written, the end when its record says so, with the record as it ended.
func TestWriteLogFollow(t *testing.T) {
	d, logs := newDB(t, []row{{"slow", "alice", "x86_64-linux", "queued", t0, time.Time{}}})
	s := records.New(d, logs, nil)
	path := records.LogPath(logs, 1)
	os.Remove(path) // a queued build has no log yet
	var out, notes syncBuf
	type result struct {
		rec *records.Record
		err error
	}
	done := make(chan result, 1)
	go func() {
		rec, err := s.WriteLog(context.Background(), records.Viewer{Account: "alice"}, "1", true, &out, &notes)
		done <- result{rec, err}
	}()
	waitFor := func(what string, f func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !f(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: out %q, notes %q", what, out.String(), notes.String())
			}
		}
	}
	waitFor("the queue note", func() bool { return strings.Contains(notes.String(), "waiting in the queue") })
	w, err := buildlog.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	d.Exec(`UPDATE builds SET record_status = 'running', worker = 'w1' WHERE id = 1`)
	w.Write([]byte("one\n"))
	w.Flush()
	waitFor("the first line", func() bool { return out.String() == "one\n" })
	waitFor("the start note", func() bool { return strings.Contains(notes.String(), "started on w1") })
	w.Write([]byte("two\n"))
	w.Close()
	d.Exec(`UPDATE builds SET record_status = 'failed', stopped_at = 5 WHERE id = 1`)
	select {
	case r := <-done:
		if r.err != nil || r.rec.Status != records.Failed || out.String() != "one\ntwo\n" {
			t.Errorf("ended with %+v, %v; log %q", r.rec, r.err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("following did not end with the build")
	}
}
