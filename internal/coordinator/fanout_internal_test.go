package coordinator

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/buildlog"
)

// stalledWriter blocks every write until released, like a client that
// stops reading its SSH channel.
type stalledWriter struct {
	release chan struct{}
	mu      sync.Mutex
	got     bytes.Buffer
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got.Write(p)
}

func (w *stalledWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got.String()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Len()
}

// A subscriber that never reads blocks neither the build's writes nor
// the other subscribers; it is cut off past its backlog, and told so
// once it reads again. The log file keeps everything.
func TestFanoutStalledSubscriber(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	f := newFanout()
	f.setPath(path)
	stalled := &stalledWriter{release: make(chan struct{})}
	fast := &syncBuffer{}
	stopStalled := f.subscribe(stalled)
	stopFast := f.subscribe(fast)

	line := []byte(strings.Repeat("x", 1023) + "\n")
	total := 3 * SubscriberBacklog
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for n := 0; n < total; n += len(line) {
			f.Write(line)
			// The build writes no faster than the reading subscriber
			// reads (writing a compressed log is only a copy, most
			// of the time: without this, it may outrun it).
			for fast.Len() < n-SubscriberBacklog/2 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	select {
	case <-wrote:
	case <-time.After(30 * time.Second):
		t.Fatal("writing the log waits for a subscriber that does not read")
	}
	// The fast subscriber has everything, though the other never read.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stopFast(ctx)
	if got := fast.Len(); got != total {
		t.Errorf("the reading subscriber got %d bytes, want %d", got, total)
	}
	f.mu.Lock()
	subscribed := len(f.subs) != 0
	f.mu.Unlock()
	if subscribed {
		t.Errorf("the stalled subscriber is still fed")
	}
	close(stalled.release)
	stopStalled(ctx)
	got := stalled.String()
	if !strings.HasSuffix(got, CutMessage) {
		t.Errorf("the stalled subscriber was not told its log was cut; it ends with %q", got[max(0, len(got)-200):])
	}
	if len(got) > SubscriberBacklog+len(line)+len(CutMessage) {
		t.Errorf("the stalled subscriber was given %d bytes, more than its backlog", len(got))
	}
	if err := f.close(); err != nil {
		t.Fatal(err)
	}
	r, err := buildlog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n, err := io.Copy(io.Discard, r); err != nil || n != int64(total) {
		t.Errorf("the log file holds %d bytes of log (%v), want %d", n, err, total)
	}
}

// A client that joins late gets the log so far, then the rest, in order;
// stopping waits for what was queued.
func TestFanoutLateSubscriber(t *testing.T) {
	f := newFanout()
	f.setPath(filepath.Join(t.TempDir(), "2.log"))
	f.Write([]byte("one\n"))
	var b syncBuffer
	stop := f.subscribe(&b)
	f.Write([]byte("two\n"))
	stop(context.Background())
	f.Write([]byte("three\n"))
	b.mu.Lock()
	defer b.mu.Unlock()
	if got := b.b.String(); got != "one\ntwo\n" {
		t.Errorf("late subscriber got %q", got)
	}
}
