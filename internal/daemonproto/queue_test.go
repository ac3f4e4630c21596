package daemonproto_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/daemonproto"
)

// queueing is the farm's Builds, with a build that first waits in the
// queue: its request hears two positions and then its start.
type queueing struct{ daemonproto.Builds }

func (q queueing) BuildDerivation(ctx context.Context, req *build.Request) (*build.Result, error) {
	if req.OnQueue == nil {
		return nil, fmt.Errorf("the request has no OnQueue")
	}
	req.OnQueue(build.QueueStatus{Position: 2, Class: "x86_64-linux", Reason: "all 3 x86_64-linux workers busy"})
	req.OnQueue(build.QueueStatus{Position: 1, Class: "x86_64-linux", Reason: "all 3 x86_64-linux workers busy", Estimate: 22 * time.Second, EstimateKnown: true})
	req.OnQueue(build.QueueStatus{Worker: "w1", Attempt: 1, Waited: 12 * time.Second})
	return q.Builds.BuildDerivation(ctx, req)
}

// A waiting build's status is Nix's build-waiting activity, its text the
// status line, replaced at each change; the start is a message, which
// every client prints.
func TestQueueFrames(t *testing.T) {
	for _, v := range []uint64{0x115, 0x122, 0x126} {
		f := newFarm(t)
		f.srv.Builds = queueing{f.srv.Builds}
		c, closeFn := f.connect(t, v)
		var events []string
		open := map[uint64]bool{}
		c.OnActivity = func(id, typ uint64, text string, stopped bool) {
			switch {
			case stopped && open[id]:
				events = append(events, "stop")
				delete(open, id)
			case !stopped && typ == 111:
				open[id] = true
				events = append(events, "waiting: "+text)
			}
		}
		c.OnMessage = func(msg string) { events = append(events, "message: "+msg) }
		drvPath, drv, _ := basic(t, fmt.Sprintf("queue%x", v))
		if res, err := c.BuildDerivation(drvPath, drv); err != nil || res.Status != build.Built {
			t.Fatalf("%x: %+v %v", v, res, err)
		}
		want := []string{
			"waiting: nixfarm: queued at position 2 for x86_64-linux: all 3 x86_64-linux workers busy; estimated start unknown",
			"stop",
			"waiting: nixfarm: queued at position 1 for x86_64-linux: all 3 x86_64-linux workers busy; estimated start in 22 s",
			"stop",
			"message: nixfarm: building on worker w1 (waited 12 s)\n",
		}
		if got := strings.Join(events, "\n"); got != strings.Join(want, "\n") {
			t.Errorf("%x: frames:\n%s\nwant:\n%s", v, got, strings.Join(want, "\n"))
		}
		if err := closeFn(); err != nil {
			t.Errorf("%x: %v", v, err)
		}
	}
}
