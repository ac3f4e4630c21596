package server

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/buildlog"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/records"
)

// logAPI serves GET /api/v1/builds/{id}/log of a farm whose builds are
// alice's 1 (running, its log written by the returned Writer) and bob's
// 2 (failed, a plain log from before compression), to the viewer named
// by the X-Test-Account header ("admin": the farm's token).
func logAPI(t *testing.T) (*httptest.Server, *buildlog.Writer, func(status string)) {
	t.Helper()
	dir := t.TempDir()
	d, err := db.Open(context.Background(), filepath.Join(dir, "nixfarm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	logs := filepath.Join(dir, "logs")
	os.MkdirAll(logs, 0o755)
	for _, b := range []struct{ account, status string }{{"alice", "running"}, {"bob", "failed"}} {
		if _, err := d.Exec(`INSERT INTO builds (drv_path, account, record_status, status, queued_at) VALUES (?, ?, ?, 0, 1)`,
			"/nix/store/"+strings.Repeat("a", 32)+"-x.drv", b.account, b.status); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(records.LogPath(logs, 2), []byte("bob's plain log\n"), 0o644)
	w, err := buildlog.Create(records.LogPath(logs, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	f := &Farm{records: records.New(d, logs, nil), log: slog.New(slog.DiscardHandler)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/builds/{id}/log", func(rw http.ResponseWriter, r *http.Request) {
		v := apiauth.Viewer{Account: r.Header.Get("X-Test-Account")}
		if v.Account == "admin" {
			v = apiauth.Viewer{Admin: true}
		}
		f.getBuildLog(rw, r.WithContext(apiauth.WithViewer(r.Context(), v)))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	end := func(status string) {
		if _, err := d.Exec(`UPDATE builds SET record_status = ?, stopped_at = 2 WHERE id = 1`, status); err != nil {
			t.Fatal(err)
		}
	}
	return srv, w, end
}

func getLog(t *testing.T, srv *httptest.Server, account, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	req.Header.Set("X-Test-Account", account)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// The log of a running build streams as it is written and ends when the
// build does.
func TestBuildLogStreams(t *testing.T) {
	srv, w, end := logAPI(t)
	resp := getLog(t, srv, "alice", "/api/v1/builds/1/log")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("status %d, %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	w.Write([]byte("first line\n"))
	w.Flush()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case l := <-lines:
		if l != "first line" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first line did not arrive while the build runs")
	}
	// What exists now, without following, ends at once.
	now := getLog(t, srv, "alice", "/api/v1/builds/1/log?follow=0")
	if b, err := io.ReadAll(now.Body); err != nil || string(b) != "first line\n" {
		t.Errorf("follow=0: %q, %v", b, err)
	}
	w.Write([]byte("last line\n"))
	w.Close()
	end("failed")
	var rest []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				if strings.Join(rest, "|") != "last line" {
					t.Errorf("then %q", rest)
				}
				return
			}
			rest = append(rest, l)
		case <-timeout:
			t.Fatalf("the stream did not end with the build; got %q", rest)
		}
	}
}

// Another account's build is 403, an unknown one 404; an admin reads
// any, old plain logs too.
func TestBuildLogAccess(t *testing.T) {
	srv, _, _ := logAPI(t)
	for _, c := range []struct {
		account, path string
		code          int
		body          string
	}{
		{"alice", "/api/v1/builds/2/log", 403, ""},
		{"alice", "/api/v1/builds/9/log", 404, ""},
		{"alice", "/api/v1/builds/x/log", 400, ""},
		{"alice", "/api/v1/builds/1/log?follow=maybe", 400, ""},
		{"", "/api/v1/builds/2/log", 401, ""},
		{"bob", "/api/v1/builds/2/log", 200, "bob's plain log\n"},
		{"admin", "/api/v1/builds/2/log?follow=1", 200, "bob's plain log\n"},
	} {
		resp := getLog(t, srv, c.account, c.path)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != c.code || (c.body != "" && string(b) != c.body) {
			t.Errorf("%s as %q: %d %q, want %d", c.path, c.account, resp.StatusCode, b, c.code)
		}
	}
}
