package server

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
)

// ?offset=N answers what follows N, and where the next read starts.
func TestBuildLogOffset(t *testing.T) {
	srv, w, end := logAPI(t)
	read := func(offset string) (string, string, string) {
		t.Helper()
		resp := getLog(t, srv, "alice", "/api/v1/builds/1/log?offset="+offset)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("offset %s: %d %s", offset, resp.StatusCode, b)
		}
		return string(b), resp.Header.Get("X-Log-Offset"), resp.Header.Get("X-Build-Status")
	}
	// Not started: nothing, from 0.
	if body, next, status := read("0"); body != "" || next != "0" || status != "running" {
		t.Errorf("no log yet: %q, next %q, status %q", body, next, status)
	}
	w.Write([]byte("first line\n"))
	w.Flush()
	body, next, _ := read("0")
	if body != "first line\n" || next != "11" {
		t.Fatalf("from 0: %q, next %q", body, next)
	}
	if body, again, _ := read(next); body != "" || again != next {
		t.Errorf("nothing new: %q, next %q", body, again)
	}
	w.Write([]byte("second line\n"))
	w.Flush()
	if body, next, _ = read(next); body != "second line\n" || next != "23" {
		t.Errorf("from 11: %q, next %q", body, next)
	}
	if body, next, _ := read("5"); body != " line\nsecond line\n" || next != "23" {
		t.Errorf("from 5: %q, next %q", body, next)
	}
	// Beyond the end (a huge offset too): nothing, and the end.
	for _, off := range []string{"24", "1000000", "9223372036854775807"} {
		if body, next, _ := read(off); body != "" || next != "23" {
			t.Errorf("from %s: %q, next %q", off, body, next)
		}
	}
	// More than a chunk: the first answer says more follows.
	big := strings.Repeat(fmt.Sprintf("%099d\n", 7), LogChunk/100+100)
	w.Write([]byte(big))
	w.Close()
	end("built")
	resp := getLog(t, srv, "alice", "/api/v1/builds/1/log?offset=23")
	b, _ := io.ReadAll(resp.Body)
	if len(b) != LogChunk || resp.Header.Get("X-Log-More") != "1" || resp.Header.Get("X-Log-Offset") != strconv.Itoa(23+LogChunk) || resp.Header.Get("X-Build-Status") != "built" {
		t.Errorf("a big log: %d bytes, headers %v", len(b), resp.Header)
	}
	rest, next, _ := read(resp.Header.Get("X-Log-Offset"))
	if string(b)+rest != big || next != strconv.Itoa(23+len(big)) {
		t.Errorf("the rest: %d bytes, next %s", len(rest), next)
	}
}

// A bad offset is a clear 400; another account's build is 403 as
// without one; plain logs seek.
func TestBuildLogOffsetInput(t *testing.T) {
	srv, _, _ := logAPI(t)
	for _, c := range []struct {
		account, query string
		code           int
		body, next     string
	}{
		{"alice", "offset=-1", 400, "", ""},
		{"alice", "offset=", 400, "", ""},
		{"alice", "offset=x", 400, "", ""},
		{"alice", "offset=1.5", 400, "", ""},
		{"alice", "offset=+1", 400, "", ""},
		{"alice", "offset=0x10", 400, "", ""},
		{"alice", "offset=1e3", 400, "", ""},
		{"alice", "offset=%20", 400, "", ""},
		{"alice", "offset=9223372036854775808", 400, "", ""},
		{"alice", "offset=99999999999999999999999", 400, "", ""},
		{"alice", "offset=0&follow=1", 400, "", ""},
		{"alice", "offset=0&follow=0", 200, "", "0"},
		{"alice", "offset=0", 200, "", "0"},
		{"alice", "offset=00", 200, "", "0"},
		{"alice", "offset=3", 200, "", "0"},
		{"bob", "offset=6", 200, "plain log\n", "16"},
		{"bob", "offset=16", 200, "", "16"},
		{"bob", "offset=17", 200, "", "16"},
		{"admin", "offset=0", 200, "bob's plain log\n", "16"},
		{"alice", "offset=abc&x=2", 400, "", ""},
	} {
		path := "/api/v1/builds/1/log?" + c.query
		if c.account != "alice" {
			path = "/api/v1/builds/2/log?" + c.query
		}
		resp := getLog(t, srv, c.account, path)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != c.code || (c.code == 200 && (string(b) != c.body || resp.Header.Get("X-Log-Offset") != c.next)) ||
			(c.code == 400 && !strings.Contains(string(b), "offset")) {
			t.Errorf("%s as %q: %d %q next %q, want %d %q next %q", path, c.account, resp.StatusCode, b, resp.Header.Get("X-Log-Offset"), c.code, c.body, c.next)
		}
	}
	for _, c := range []struct {
		account, path string
		code          int
	}{
		{"alice", "/api/v1/builds/2/log?offset=0", 403},
		{"bob", "/api/v1/builds/1/log?offset=5", 403},
		{"alice", "/api/v1/builds/9/log?offset=0", 404},
		{"", "/api/v1/builds/2/log?offset=0", 401},
	} {
		resp := getLog(t, srv, c.account, c.path)
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != c.code || resp.Header.Get("X-Log-Offset") != "" {
			t.Errorf("%s as %q: %d %s, want %d", c.path, c.account, resp.StatusCode, b, c.code)
		}
	}
}
