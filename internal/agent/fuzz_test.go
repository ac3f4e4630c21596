package agent

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzReadMessage checks the reader of agents' control messages, JSON
// lines from a machine that holds a join token: no panic, and a reader of
// a bounded size never hands out a message from a line longer than its
// buffer.
func FuzzReadMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"register","name":"w1","version":"1","capabilities":{"systems":["x86_64-linux"],"maxJobs":2,"speedFactor":1}}` + "\n",
		`{"type":"heartbeat","load":{"running":1}}` + "\n",
		`{"type":"welcome","heartbeatMillis":5000}` + "\n" + `{"type":"error","message":"x"}` + "\n",
		`{"type":"heartbeat","load":null}` + "\n",
		"{\n",
		"null\n",
		`{"type":1}` + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const size = 64 // bufio's minimum
		r := bufio.NewReaderSize(bytes.NewReader(data), size)
		rest := data
		for i := 0; i < 1000; i++ {
			line, _, _ := bytes.Cut(rest, []byte("\n"))
			_, err := readMessage(r)
			if err != nil {
				return
			}
			if len(line)+1 > size {
				t.Fatalf("a message from a line of %d bytes through a buffer of %d", len(line)+1, size)
			}
			rest = rest[len(line)+1:]
		}
	})
}
