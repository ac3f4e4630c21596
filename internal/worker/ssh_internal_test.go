package worker

import "testing"

func TestShellJoin(t *testing.T) {
	cases := []struct {
		in   []string
		want string
	}{
		{[]string{"--serve", "--write"}, "--serve --write"},
		{[]string{"--store", "/tmp/with space"}, "--store '/tmp/with space'"},
		{[]string{"--store", "it's"}, `--store 'it'\''s'`},
		{[]string{"--store", "local?root=/x"}, "--store 'local?root=/x'"},
		{[]string{"--option", "system-features", ""}, "--option system-features ''"},
		{[]string{"$(reboot)"}, "'$(reboot)'"},
	}
	for _, c := range cases {
		if got := shellJoin(c.in); got != c.want {
			t.Errorf("shellJoin(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}
