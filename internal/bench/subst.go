package bench

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// S9 measures a builder that substitutes a build's inputs from an
// upstream cache (nginx on loopback) instead of receiving them from the
// client: `builders-use-substitutes = true`.

// s9Closure is S9's closure in its client store and nginx's cache.
type s9Closure struct {
	dir    string
	client string
	bb     string
	paths  []string // every path, busybox last
	bytes  int64    // their files' total size
	key    string   // the cache's public key
	expr   string   // the top derivation's expression file
	nginx  *nginx
	cache  string   // nginx's root, the file:// cache
	config []string // the client's environment: the cache as substituter
}

// s9Sizes splits total bytes over n paths, a few large and many small
// (weights 1/(i+1)^0.7), each at least 4 KiB.
func s9Sizes(n int, total int64) []int64 {
	var sum float64
	for i := 0; i < n; i++ {
		sum += math.Pow(float64(i+1), -0.7)
	}
	sizes := make([]int64, n)
	for i := range sizes {
		sizes[i] = max(4096, int64(float64(total)*math.Pow(float64(i+1), -0.7)/sum))
	}
	return sizes
}

// s9Prepare builds the closure in a chroot store, signs it, copies it to
// a file:// cache and serves that with nginx, logging every request.
func (e *env) s9Prepare(ctx context.Context) (*s9Closure, error) {
	c := &s9Closure{dir: filepath.Join(e.dir, "s9")}
	c.client = filepath.Join(c.dir, "client")
	src := filepath.Join(c.dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for i, size := range s9Sizes(e.cfg.S9Paths, int64(e.cfg.S9MiB)<<20) {
		p := filepath.Join(src, fmt.Sprintf("s9-dep-%04d", i))
		if err := writeContent(p, fmt.Sprintf("%s-s9-%d", e.stamp, i), size, true); err != nil {
			return nil, err
		}
		files = append(files, p)
		c.bytes += size
	}
	e.progress("S9 adding a closure of %d paths, %.0f MB, to a client store", len(files), float64(c.bytes)/1e6)
	var err error
	if c.paths, err = e.addFiles(ctx, c.client, files); err != nil {
		return nil, err
	}
	os.RemoveAll(src)
	if c.bb, err = e.addBusybox(ctx, c.client); err != nil {
		return nil, err
	}
	c.paths = append(c.paths, c.bb)
	sec, pub := filepath.Join(c.dir, "key.sec"), filepath.Join(c.dir, "key.pub")
	if _, err := e.nix(ctx, "nix-store", "--generate-binary-cache-key", "bench-s9-1", sec, pub); err != nil {
		return nil, err
	}
	key, err := os.ReadFile(pub)
	if err != nil {
		return nil, err
	}
	c.key = strings.TrimSpace(string(key))
	if _, err := e.nix(ctx, "nix", append([]string{"store", "sign", "--store", c.client, "--key-file", sec}, c.paths...)...); err != nil {
		return nil, err
	}
	cache := filepath.Join(c.dir, "cache")
	c.cache = cache
	e.progress("S9 copying it to file://%s?compression=zstd", cache)
	if _, err := e.nix(ctx, "nix", append([]string{"copy", "--store", c.client, "--to", "file://" + cache + "?compression=zstd"}, c.paths...)...); err != nil {
		return nil, err
	}
	if c.nginx, err = e.startNginx(filepath.Join(c.dir, "nginx"), cache, true); err != nil {
		return nil, err
	}
	// The client's own substituter is the cache too: a remote nix-daemon
	// takes the client's settings, and an empty list would leave the
	// stock builder none.
	c.config = []string{fmt.Sprintf("NIX_CONFIG=substituters = %s\ntrusted-public-keys = %s\nexperimental-features = nix-command", c.nginx.url(), c.key)}
	var expr strings.Builder
	expr.WriteString("{ nonce, bbPath }:\nlet bb = builtins.storePath bbPath; in\nderivation {\n  name = \"s9-${nonce}\";\n  system = \"x86_64-linux\";\n")
	expr.WriteString("  builder = \"${bb}/bin/sh\";\n  PATH = \"${bb}/bin\";\n  deps = map builtins.storePath [\n")
	for _, p := range c.paths[:len(c.paths)-1] {
		fmt.Fprintf(&expr, "    %q\n", p)
	}
	expr.WriteString("  ];\n  args = [ \"-c\" \"n=0; for d in $deps; do test -e $d || exit 1; n=$((n+1)); done; echo $n > $out\" ];\n}\n")
	c.expr = filepath.Join(c.dir, "s9.nix")
	return c, os.WriteFile(c.expr, []byte(expr.String()), 0o644)
}

// narsServed counts the NARs nginx has served (200s).
func (n *nginx) narsServed() (int, error) {
	data, err := os.ReadFile(n.accessLog)
	if err != nil && !os.IsNotExist(err) {
		return 0, err
	}
	count := 0
	for _, line := range bytes.Split(data, []byte("\n")) {
		if bytes.Contains(line, []byte("\"GET /nar/")) && bytes.Contains(line, []byte("\" 200 ")) {
			count++
		}
	}
	return count, nil
}

// farmViews summarises how the farm's paths came to be in views: per
// account (the farm's upstream view is one) how ("signed", "upload",
// "built", …) and how many.
func farmViews(ctx context.Context, stateDir string) string {
	d, err := sql.Open("sqlite", "file:"+filepath.Join(stateDir, "nixfarm.db")+"?mode=ro")
	if err != nil {
		return err.Error()
	}
	defer d.Close()
	rows, err := d.QueryContext(ctx, "SELECT account, how, COUNT(*) FROM views GROUP BY account, how ORDER BY account, how")
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var parts []string
	for rows.Next() {
		var account, how string
		var n int
		if err := rows.Scan(&account, &how, &n); err != nil {
			return err.Error()
		}
		parts = append(parts, fmt.Sprintf("%q %s %d", account, how, n))
	}
	if err := rows.Err(); err != nil {
		return err.Error()
	}
	return strings.Join(parts, ", ")
}

// s9 builds a derivation depending on the whole closure on a fresh
// builder per run, which substitutes the closure from nginx.
func (e *env) s9(ctx context.Context) ([]Result, error) {
	c, err := e.s9Prepare(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(c.nginx.cmd)
	var sides []string
	if _, ok := e.sides[Stock]; ok {
		sides = append(sides, Stock)
		// The stock builder's own Nix substitutes from the cache too,
		// whatever the client sends.
		script := fmt.Sprintf("#!/bin/sh\nexport NIX_CONFIG='substituters = %s\ntrusted-public-keys = %s\nmax-jobs = %d'\nexec nix-daemon \"$@\"\n", c.nginx.url(), c.key, jobs)
		if err := os.WriteFile(filepath.Join(c.dir, "nix-daemon-remote"), []byte(script), 0o755); err != nil {
			return nil, err
		}
	}
	farmPort := ""
	if _, ok := e.sides[Nixfarm]; ok {
		sides = append(sides, Nixfarm)
		if farmPort, err = freePort(); err != nil {
			return nil, err
		}
		e.addFarmHost("nixfarm-s9", &farmProc{port: farmPort})
		if err := e.writeSSHConfig(); err != nil {
			return nil, err
		}
	}
	samples := map[string][]float64{}
	for run := 0; run < e.cfg.Runs; run++ {
		for _, side := range sides {
			d, err := e.s9Run(ctx, c, side, run, farmPort)
			if err != nil {
				return nil, fmt.Errorf("S9 on %s: %w", side, err)
			}
			samples[side] = append(samples[side], d.Seconds())
		}
	}
	values := map[string]float64{}
	for _, side := range sides {
		values[side] = median(samples[side])
		e.progress("S9 %-11s ssh-ng median %ss of %d (%s)", side, format(values[side], "s"), len(samples[side]), formatSamples(samples[side], "%.2f"))
	}
	return []Result{{Scenario: fmt.Sprintf("S9 substitution: %d paths, %.0f MB, from nginx", len(c.paths), float64(c.bytes)/1e6),
		Protocol: "ssh-ng", Unit: "s", Values: values, Target: "≤ 0.5 × stock", Met: ratioMet(values, Stock, 0.5)}}, nil
}

// s9Run is one S9 build on a fresh builder of side.
func (e *env) s9Run(ctx context.Context, c *s9Closure, side string, run int, farmPort string) (time.Duration, error) {
	runDir := filepath.Join(c.dir, fmt.Sprintf("%s-%d", side, run))
	var builders string
	var farm *farmProc
	switch side {
	case Stock:
		params := fmt.Sprintf("remote-store=%s&remote-program=%s", filepath.Join(runDir, "store"), filepath.Join(c.dir, "nix-daemon-remote"))
		builders = fmt.Sprintf("ssh-ng://%s?%s x86_64-linux - %d 1 - - %s", Stock, params, jobs, e.stockHostKey)
	case Nixfarm:
		profile := ""
		if e.cfg.FarmCPUProfile != "" {
			profile = fmt.Sprintf("%s.s9-%d", e.cfg.FarmCPUProfile, run)
		}
		var err error
		farm, err = e.launchFarm(runDir, "127.0.0.1:"+farmPort, "", profile, "--substituter", c.nginx.url(), "--trusted-public-key", c.key)
		if err != nil {
			return 0, err
		}
		defer e.stop(farm.cmd)
		builders = fmt.Sprintf("ssh-ng://nixfarm-s9 x86_64-linux - %d 1 - - %s", jobs, farm.hostKey)
	}
	before, err := c.nginx.narsServed()
	if err != nil {
		return 0, err
	}
	// Every run starts from the same memory: the page cache emptied of
	// what the runs before wrote, the cache's files read back in (nginx
	// serves from memory, as a warm cache server would).
	if err := e.evenMemory(c.cache); err != nil {
		return 0, err
	}
	start := time.Now()
	_, err = e.nixWith(ctx, c.config, "nix-build", "--store", c.client, "--no-out-link", c.expr, "--argstr", "nonce", e.next("S9"),
		"--argstr", "bbPath", c.bb, "--max-jobs", "0", "--builders", builders, "--option", "builders-use-substitutes", "true")
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	after, err := c.nginx.narsServed()
	if err != nil {
		return 0, err
	}
	how := ""
	if farm != nil {
		how = "; farm's views: " + farmViews(ctx, farm.stateDir)
	}
	e.progress("S9 %-11s run %d: %.2fs, %d of %d NARs from nginx%s", side, run, d.Seconds(), after-before, len(c.paths), how)
	// The builder must have fetched the closure from the cache, not
	// been sent it by the client.
	if after-before < len(c.paths) {
		return 0, fmt.Errorf("the builder fetched %d of the closure's %d NARs from nginx; the client must have uploaded the rest", after-before, len(c.paths))
	}
	if farm != nil {
		e.stop(farm.cmd)
	}
	// A given work directory keeps every store and log; a temporary one
	// loses each run's builder (up to twice the closure) at once.
	if e.cfg.WorkDir == "" {
		exec.Command("chmod", "-R", "u+w", runDir).Run()
		os.RemoveAll(runDir)
	}
	return d, nil
}
