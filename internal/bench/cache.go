package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// S8 measures the farm as a Nix binary cache over HTTP against Debian's
// nginx serving the same paths from a `nix copy --to file://` directory,
// both driven by wrk.

// wrk's settings: narinfos with 2 threads and 8 connections, a large NAR
// with 1 thread and 2 connections.
const (
	narinfoThreads, narinfoConns = 2, 8
	narThreads, narConns         = 1, 2
)

// nginx is a running nginx serving root on 127.0.0.1:port.
type nginx struct {
	cmd       *exec.Cmd
	port      string
	accessLog string // "" if off
}

func (n *nginx) url() string { return "http://127.0.0.1:" + n.port }

// startNginx starts Debian's nginx in the foreground with its own config
// in dir, serving root. With accessLog, every request is logged to
// dir/access.log (S9 counts the NARs fetched), else none is (S8).
func (e *env) startNginx(dir, root string, accessLog bool) (*nginx, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/nginx"); err2 != nil {
			return nil, fmt.Errorf("nginx is missing (apt-get install nginx-light): %w", err)
		}
		bin = "/usr/sbin/nginx"
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &nginx{port: port}
	logLine := "access_log off;"
	if accessLog {
		n.accessLog = filepath.Join(dir, "access.log")
		logLine = "access_log " + n.accessLog + ";"
	}
	// user root: the work directory is root's alone (0700), and nginx's
	// workers would otherwise run as nobody.
	conf := fmt.Sprintf(`daemon off;
user root;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  %[2]s
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path %[1]s/tmp;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar zst xz; text/plain nix-cache-info; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:%[3]s;
    root %[4]s;
  }
}
`, dir, logLine, port, root)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	logf, _ := os.Create(filepath.Join(dir, "nginx.out"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n.cmd = cmd
	e.procs = append(e.procs, cmd)
	if err := waitPort(port, 10*time.Second); err != nil {
		e.stop(cmd)
		return nil, fmt.Errorf("nginx did not start (see %s and %s): %w", logf.Name(), filepath.Join(dir, "error.log"), err)
	}
	return n, nil
}

// wrkResult is what one wrk run measured.
type wrkResult struct {
	requests    float64 // per second
	bytes       float64 // per second
	median      time.Duration
	completed   int
	non2xx      int
	socketError string
}

var (
	wrkRPS       = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkTransfer  = regexp.MustCompile(`(?m)^Transfer/sec:\s+([0-9.]+)([KMGT]?B)`)
	wrkMedian    = regexp.MustCompile(`(?m)^\s+50%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	wrkCompleted = regexp.MustCompile(`(?m)^\s+(\d+) requests in `)
	wrkNon2xx    = regexp.MustCompile(`(?m)^\s+Non-2xx or 3xx responses: (\d+)`)
	wrkSocket    = regexp.MustCompile(`(?m)^\s+Socket errors: (.*)$`)
)

// wrk runs Debian's wrk against url for seconds and parses its report.
// script, if set, is a Lua script choosing the requests; token, if set,
// goes in an Authorization: Bearer header.
func (e *env) wrk(ctx context.Context, url, script, token string, threads, conns, seconds int) (wrkResult, error) {
	args := []string{"-t", fmt.Sprint(threads), "-c", fmt.Sprint(conns), "-d", fmt.Sprintf("%ds", seconds), "--latency", "--timeout", "60s"}
	if script != "" {
		args = append(args, "-s", script)
	}
	if token != "" {
		args = append(args, "-H", "Authorization: Bearer "+token)
	}
	args = append(args, url)
	out, err := exec.CommandContext(ctx, "wrk", args...).CombinedOutput()
	if err != nil {
		var notFound *exec.Error
		if errors.As(err, &notFound) {
			return wrkResult{}, fmt.Errorf("wrk is missing (apt-get install wrk): %w", err)
		}
		return wrkResult{}, fmt.Errorf("wrk %s: %w\n%s", url, err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads wrk's report (with --latency).
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkRPS.FindStringSubmatch(out)
	t := wrkTransfer.FindStringSubmatch(out)
	l := wrkMedian.FindStringSubmatch(out)
	c := wrkCompleted.FindStringSubmatch(out)
	if m == nil || t == nil || l == nil || c == nil {
		return r, fmt.Errorf("cannot read wrk's report:\n%s", out)
	}
	r.requests, _ = strconv.ParseFloat(m[1], 64)
	r.bytes, _ = strconv.ParseFloat(t[1], 64)
	r.bytes *= map[string]float64{"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[t[2]]
	v, _ := strconv.ParseFloat(l[1], 64)
	r.median = time.Duration(v * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute}[l[2]]))
	r.completed, _ = strconv.Atoi(c[1])
	if n := wrkNon2xx.FindStringSubmatch(out); n != nil {
		r.non2xx, _ = strconv.Atoi(n[1])
	}
	if s := wrkSocket.FindStringSubmatch(out); s != nil {
		r.socketError = s[1]
	}
	return r, nil
}

// writeContent writes size bytes seeded by seed to path: pseudo-random
// bytes, or, if compressible, 64 KiB blocks alternating between random
// bytes and repeated text, about what zstd makes of a package.
func writeContent(path, seed string, size int64, compressible bool) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	var key [32]byte
	copy(key[:], seed)
	rng := rand.NewChaCha8(key)
	w := bufio.NewWriterSize(f, 1<<20)
	text := []byte(strings.Repeat(fmt.Sprintf("%s: the quick brown fox jumps over the lazy dog 0123456789\n", seed), 1+(64<<10)/60))
	buf := make([]byte, 64<<10)
	for written, block := int64(0), 0; written < size; written, block = written+int64(len(buf)), block+1 {
		n := min(int64(len(buf)), size-written)
		if compressible && block%2 == 1 {
			copy(buf, text)
		} else {
			rng.Read(buf)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// addFiles adds files to store in one nix-store --add (a path per file,
// in order).
func (e *env) addFiles(ctx context.Context, store string, files []string) ([]string, error) {
	out, err := e.nix(ctx, "nix-store", append([]string{"--store", store, "--add"}, files...)...)
	if err != nil {
		return nil, err
	}
	paths := strings.Fields(out)
	if len(paths) != len(files) {
		return nil, fmt.Errorf("nix-store --add of %d files printed %d paths", len(files), len(paths))
	}
	return paths, nil
}

// hashPart is a store path's hash part.
func hashPart(path string) string {
	base := filepath.Base(path)
	if i := strings.IndexByte(base, '-'); i > 0 {
		return base[:i]
	}
	return base
}

// get fetches url (with token as a Bearer token, if set) and returns its
// body, failing on anything but 200.
func get(ctx context.Context, url, token string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %.200s", url, resp.Status, body)
	}
	return body, nil
}

// narURL reads the URL field of the narinfo at base/hash.narinfo and
// returns it absolute.
func narURL(ctx context.Context, base, hash, token string) (string, error) {
	body, err := get(ctx, base+"/"+hash+".narinfo", token)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if u, ok := strings.CutPrefix(line, "URL: "); ok {
			return base + "/" + strings.TrimSpace(u), nil
		}
	}
	return "", fmt.Errorf("%s/%s.narinfo has no URL", base, hash)
}

// farmToken makes account bench a binary cache token on the farm.
func (e *env) farmToken(ctx context.Context, f *farmProc) (string, error) {
	// The account may exist already (its key in authorized_keys); a
	// token needs it in the accounts table.
	add := exec.CommandContext(ctx, e.cfg.Nixfarm, "accounts", "add", "bench", "--state-dir", f.stateDir)
	addOut, addErr := add.CombinedOutput()
	out, err := exec.CommandContext(ctx, e.cfg.Nixfarm, "accounts", "token", "bench", "--state-dir", f.stateDir).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nixfarm accounts token bench: %w\n%s(accounts add: %v %s)", err, out, addErr, addOut)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if fields := strings.Fields(line); len(fields) == 6 && fields[0] == "machine" && fields[4] == "password" {
			return fields[5], nil
		}
	}
	return "", fmt.Errorf("nixfarm accounts token printed no netrc line:\n%s", out)
}

// s8 serves S8Paths small paths and one large one from nginx and from
// the farm, and measures narinfo requests and the large NAR's transfer.
func (e *env) s8(ctx context.Context) ([]Result, error) {
	dir := filepath.Join(e.dir, "s8")
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for i := 0; i < e.cfg.S8Paths; i++ {
		p := filepath.Join(src, fmt.Sprintf("s8-small-%05d", i))
		if err := writeContent(p, fmt.Sprintf("%s-s8-%d", e.stamp, i), int64(2048+(i*7919)%4096), false); err != nil {
			return nil, err
		}
		files = append(files, p)
	}
	large := filepath.Join(src, "s8-large")
	if err := writeContent(large, e.stamp+"-s8-large", int64(e.cfg.S8LargeMiB)<<20, false); err != nil {
		return nil, err
	}
	files = append(files, large)
	client := filepath.Join(dir, "client")
	e.progress("S8 adding %d paths to a client store", len(files))
	paths, err := e.addFiles(ctx, client, files)
	if err != nil {
		return nil, err
	}
	os.RemoveAll(src)
	cache := filepath.Join(dir, "cache")
	if _, err := e.nix(ctx, "nix", append([]string{"copy", "--store", client, "--to", "file://" + cache + "?compression=zstd"}, paths...)...); err != nil {
		return nil, err
	}
	ng, err := e.startNginx(filepath.Join(dir, "nginx"), cache, false)
	if err != nil {
		return nil, err
	}
	defer e.stop(ng.cmd)
	bases := map[string]string{Nginx: ng.url()}
	tokens := map[string]string{}
	sides := []string{Nginx}
	if s, ok := e.sides[Nixfarm]; ok && e.farm != nil {
		e.progress("S8 copying them to the farm (nix copy --to ssh-ng://)")
		if _, err := e.nix(ctx, "nix", append([]string{"copy", "--store", client, "--to", s.storeURI}, paths...)...); err != nil {
			return nil, err
		}
		tok, err := e.farmToken(ctx, e.farm)
		if err != nil {
			return nil, err
		}
		bases[Nixfarm], tokens[Nixfarm] = "http://"+e.farm.http, tok
		sides = append(sides, Nixfarm)
	}

	// The script cycles through the small paths' narinfos.
	var lua strings.Builder
	lua.WriteString("local paths = {\n")
	for _, p := range paths[:len(paths)-1] {
		fmt.Fprintf(&lua, "  %q,\n", "/"+hashPart(p)+".narinfo")
	}
	lua.WriteString("}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")
	script := filepath.Join(dir, "narinfos.lua")
	if err := os.WriteFile(script, []byte(lua.String()), 0o644); err != nil {
		return nil, err
	}
	// Each side's large NAR, as its narinfo names it, requested once
	// untimed so that the farm's compressed copy exists.
	nars := map[string]string{}
	for _, side := range sides {
		if _, err := get(ctx, bases[side]+"/"+hashPart(paths[0])+".narinfo", tokens[side]); err != nil {
			return nil, fmt.Errorf("%s: %w", side, err)
		}
		if nars[side], err = narURL(ctx, bases[side], hashPart(paths[len(paths)-1]), tokens[side]); err != nil {
			return nil, fmt.Errorf("%s: %w", side, err)
		}
		if !strings.HasSuffix(nars[side], ".nar.zst") {
			return nil, fmt.Errorf("%s: the large path's narinfo points at %s, not a .nar.zst", side, nars[side])
		}
		start := time.Now()
		body, err := get(ctx, nars[side], tokens[side])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", side, err)
		}
		e.progress("S8 %-7s large NAR %s: %.1f MB compressed, first request %.2fs", side, filepath.Base(nars[side]), float64(len(body))/1e6, time.Since(start).Seconds())
	}

	rps, medians, mbps := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for run := 0; run < e.cfg.Runs; run++ {
		for _, side := range sides {
			r, err := e.wrk(ctx, bases[side]+"/", script, tokens[side], narinfoThreads, narinfoConns, e.cfg.S8Seconds)
			if err == nil && r.non2xx > 0 {
				err = fmt.Errorf("%d of %d narinfo requests were not answered 200", r.non2xx, r.completed)
			}
			if err != nil {
				return nil, fmt.Errorf("S8 narinfos from %s: %w", side, err)
			}
			rps[side] = append(rps[side], r.requests)
			medians[side] = append(medians[side], float64(r.median)/float64(time.Millisecond))
			n, err := e.wrk(ctx, nars[side], "", tokens[side], narThreads, narConns, e.cfg.S8Seconds)
			if err == nil && n.non2xx > 0 {
				err = fmt.Errorf("%d of %d NAR requests were not answered 200", n.non2xx, n.completed)
			}
			if err == nil && n.completed == 0 {
				err = fmt.Errorf("no NAR request finished in %d s (raise --s8-seconds)", e.cfg.S8Seconds)
			}
			if err != nil {
				return nil, fmt.Errorf("S8 large NAR from %s: %w", side, err)
			}
			mbps[side] = append(mbps[side], n.bytes/1e6)
		}
	}
	req, lat, thr := map[string]float64{}, map[string]float64{}, map[string]float64{}
	for _, side := range sides {
		req[side], lat[side], thr[side] = median(rps[side]), median(medians[side]), median(mbps[side])
		e.progress("S8 %-7s narinfo median %.0f req/s (%s), latency median %.3f ms (%s); NAR median %.0f MB/s (%s)", side,
			req[side], formatSamples(rps[side], "%.0f"), lat[side], formatSamples(medians[side], "%.3f"), thr[side], formatSamples(mbps[side], "%.0f"))
	}
	var reqMet, latMet, thrMet *bool
	if _, ok := req[Nixfarm]; ok {
		a, b, c := req[Nixfarm] >= 0.5*req[Nginx], lat[Nixfarm] <= 1, thr[Nixfarm] >= 0.8*thr[Nginx]
		reqMet, latMet, thrMet = &a, &b, &c
	}
	name := fmt.Sprintf("S8 cache: narinfos of %d paths", e.cfg.S8Paths)
	return []Result{
		{Scenario: name, Protocol: "http", Unit: "req/s", HigherIsBetter: true, Values: req, Baseline: Nginx,
			Target: "≥ 0.5 × nginx", Met: reqMet},
		{Scenario: name + ", median latency", Protocol: "http", Unit: "ms", Values: lat, Baseline: Nginx,
			Target: "≤ 1 ms", Met: latMet},
		{Scenario: fmt.Sprintf("S8 cache: a %d MiB NAR (.nar.zst)", e.cfg.S8LargeMiB), Protocol: "http", Unit: "MB/s", HigherIsBetter: true,
			Values: thr, Baseline: Nginx, Target: "≥ 0.8 × nginx", Met: thrMet},
	}, nil
}
