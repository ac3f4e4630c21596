package binarycache_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// benchGet fetches url over loopback from parallel clients, b.N times in
// all, and wants 200 with want bytes.
func benchGet(b *testing.B, url, token string, want int) {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("GET", url, nil)
			if token != "" {
				req.SetBasicAuth("alice", token)
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || (want >= 0 && n != int64(want)) {
				b.Fatalf("%s: %s, %d bytes", url, resp.Status, n)
			}
		}
	})
}

// BenchmarkNarinfo: narinfo requests over loopback, against a static file
// of the same size served by net/http (the nginx stand-in).
func BenchmarkNarinfo(b *testing.B) {
	f := newFixture(b, nil)
	info := add(b, f.alice, "hello", []byte("hello"))
	url := f.url + "/" + info.Path.HashPart() + ".narinfo"
	body := f.get(b, "/"+info.Path.HashPart()+".narinfo")
	b.Run("cache", func(b *testing.B) { benchGet(b, url, f.aliceTok, len(body)) })
	b.Run("static-file", func(b *testing.B) {
		dir := b.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "x.narinfo"), body, 0o644); err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
		defer srv.Close()
		benchGet(b, srv.URL+"/x.narinfo", "", len(body))
	})
}

// BenchmarkNar: downloads of an 8 MiB NAR, plain and from its zstd copy.
func BenchmarkNar(b *testing.B) {
	f := newFixture(b, nil)
	info := add(b, f.alice, "big", random(5, 8<<20))
	for _, ext := range []string{".nar", ".nar.zst"} {
		body := f.get(b, narPath(info, ext)) // makes the copy
		b.Run(ext, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			benchGet(b, f.url+narPath(info, ext), f.aliceTok, len(body))
		})
	}
}
