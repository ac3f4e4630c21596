package daemonproto

import (
	"slices"
	"strings"
	"testing"
)

// A client's feature list reaches the log bounded: 8 names of 64 bytes.
func TestLoggable(t *testing.T) {
	if got := loggable(nil); len(got) != 0 {
		t.Errorf("none: %q", got)
	}
	if got := loggable([]string{"a", "b"}); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("two: %q", got)
	}
	many := make([]string, 64)
	for i := range many {
		many[i] = strings.Repeat("x", 256)
	}
	got := loggable(many)
	if len(got) != 9 || got[8] != "(and 56 more)" || len(got[0]) != 67 {
		t.Errorf("64 long names: %d names, last %q, first %d bytes", len(got), got[len(got)-1], len(got[0]))
	}
	if v := versionString(0xabcd0126); v != "1.38" {
		t.Errorf("versionString with stray high bits: %s", v)
	}
}
