package coordinator

import (
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
)

// A follower is given the latest status, coalescing those that came
// while it waited out its interval; a start only after it was told the
// build waited; and a follower that blocks holds up neither publish nor
// another follower.
func TestQueueFeedFollow(t *testing.T) {
	q := newQueueFeed()
	var mu sync.Mutex
	var got []int // positions; -1 for a start
	delivered := make(chan struct{}, 10)
	stop := q.follow(func(st build.QueueStatus) {
		mu.Lock()
		if st.Started() {
			got = append(got, -1)
		} else {
			got = append(got, st.Position)
		}
		mu.Unlock()
		delivered <- struct{}{}
	}, 300*time.Millisecond)
	defer stop()

	stuck := make(chan struct{})
	defer close(stuck)
	stopStuck := q.follow(func(build.QueueStatus) { <-stuck }, time.Millisecond)
	defer func() { go stopStuck() }()

	q.publish(build.QueueStatus{Position: 3, Reason: "busy"})
	<-delivered
	q.publish(build.QueueStatus{Position: 2, Reason: "busy"}) // within the interval: replaced
	q.publish(build.QueueStatus{Position: 1, Reason: "busy"})
	<-delivered
	q.publish(build.QueueStatus{Worker: "w", Attempt: 1})
	<-delivered
	mu.Lock()
	defer mu.Unlock()
	if want := []int{3, 1, -1}; !reflect.DeepEqual(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}

	// A build that starts at once adds no line.
	q2 := newQueueFeed()
	calls := 0
	stop2 := q2.follow(func(build.QueueStatus) { calls++ }, time.Millisecond)
	q2.publish(build.QueueStatus{Worker: "w", Attempt: 1})
	time.Sleep(50 * time.Millisecond)
	stop2()
	if calls != 0 {
		t.Errorf("a build that never waited was announced %d times", calls)
	}
}
