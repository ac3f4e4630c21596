package bench

import (
	"testing"
	"time"
)

// wrk 4.1's report, as Debian's wrk printed it against a server that
// answered 404.
const wrkReport = `Running 1s test @ http://127.0.0.1:18931/nonexistent
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.07ms    1.92ms  15.93ms   87.38%
    Req/Sec     1.07k   171.77     1.36k    70.00%
  Latency Distribution
     50%    1.35ms
     75%    2.66ms
     90%    4.39ms
     99%    9.53ms
  1071 requests in 1.00s, 543.87KB read
  Non-2xx or 3xx responses: 1071
Requests/sec:   1068.60
Transfer/sec:      1.50GB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkReport)
	if err != nil {
		t.Fatal(err)
	}
	if r.requests != 1068.60 || r.completed != 1071 || r.non2xx != 1071 {
		t.Errorf("requests %v/s, %d completed, %d non-2xx; want 1068.6/s, 1071, 1071", r.requests, r.completed, r.non2xx)
	}
	if r.median != 1350*time.Microsecond {
		t.Errorf("median %v, want 1.35ms", r.median)
	}
	if want := 1.5 * (1 << 30); r.bytes != want {
		t.Errorf("transfer %v B/s, want %v", r.bytes, want)
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n"); err == nil {
		t.Error("parseWrk accepted a report without figures")
	}
}

func TestS9Sizes(t *testing.T) {
	const total = 512 << 20
	sizes := s9Sizes(300, total)
	var sum int64
	for i, s := range sizes {
		sum += s
		if s < 4096 || (i > 0 && s > sizes[i-1]) {
			t.Fatalf("sizes %v: want each ≥ 4 KiB, and non-increasing", sizes[:i+1])
		}
	}
	if sum < total*99/100 || sum > total*101/100 {
		t.Errorf("sizes sum to %d, want about %d", sum, total)
	}
}
