package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchCommand runs `nixfarm bench` once, small, on every side, so
// the command behind docs/benchmarks.md cannot rot. It checks that every
// side produced a figure for every scenario and that the table is whole;
// it asserts no timings. S2 and S3 take the same path as S1 and are left
// out to keep CI short. S8 (the farm's binary cache against nginx) and
// S9 (substitution from nginx, stock against the farm) run small.
func TestBenchCommand(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("/usr/sbin/sshd is missing (openssh-server), and CI must run this test")
		}
		t.Skip("*** SKIPPING: /usr/sbin/sshd is missing (apt-get install openssh-server)")
	}
	for _, tool := range []string{"/usr/sbin/nginx", "/usr/bin/wrk"} {
		if _, err := os.Stat(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing (nginx-light, wrk), and CI must run this test", tool)
			}
			t.Skipf("*** SKIPPING: %s is missing (apt-get install nginx-light wrk)", tool)
		}
	}
	if testing.Short() {
		t.Skip("-short: the bench smoke run takes about a minute")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nixfarmBin, "bench", "--runs", "1", "--s4-mib", "4", "--s6-queued", "2000",
		"--s8-paths", "50", "--s8-large-mib", "8", "--s8-seconds", "1", "--s9-paths", "50", "--s9-mib", "20",
		"--scenarios", "S1,S4,S5,S6,S7,S8,S9", "--work-dir", t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nixfarm bench: %v\nstderr:\n%s", err, stderr.String())
	}
	table := stdout.String()
	t.Logf("table:\n%s", table)

	const (
		stock = 3 + iota
		tuned
		local
		nginx
		farm
		ratioStock
		ratioTuned
	)
	rows := map[string][]string{}
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "| S") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) != 11 {
			t.Fatalf("row with %d cells, want 11: %s", len(cells), line)
		}
		rows[cells[0][:2]+" "+cells[1]+" "+cells[2]] = cells
	}
	number := func(row []string, i int) bool {
		v, err := strconv.ParseFloat(row[i], 64)
		return err == nil && v > 0
	}
	for _, want := range []struct {
		key   string
		sides []int
	}{
		{"S1 ssh-ng s", []int{stock, tuned, local, farm, ratioStock, ratioTuned}},
		{"S1 ssh s", []int{stock, tuned, local, farm, ratioStock, ratioTuned}},
		{"S4 ssh-ng MB/s", []int{stock, tuned, local, farm, ratioStock, ratioTuned}},
		{"S5 ssh-ng s", []int{stock, tuned, farm, ratioStock, ratioTuned}},
		{"S7 ssh-ng s", []int{stock, tuned, local, farm, ratioStock, ratioTuned}},
		{"S8 http req/s", []int{nginx, farm, ratioStock}},
		{"S8 http ms", []int{nginx, farm, ratioStock}},
		{"S8 http MB/s", []int{nginx, farm, ratioStock}},
		{"S9 ssh-ng s", []int{stock, farm, ratioStock}},
	} {
		row, ok := rows[want.key]
		if !ok {
			t.Errorf("no row %q in the table", want.key)
			continue
		}
		for _, i := range want.sides {
			if !number(row, i) {
				t.Errorf("row %q: column %d is %q, want a figure", want.key, i, row[i])
			}
		}
		if !strings.ContainsAny(row[10], "✅❌") {
			t.Errorf("row %q: target %q says neither met nor missed", want.key, row[10])
		}
	}
	var s6 int
	for key, row := range rows {
		if strings.HasPrefix(key, "S6") {
			s6++
			if !number(row, farm) {
				t.Errorf("S6 row %q has no nixfarm figure: %q", key, row[farm])
			}
		}
	}
	if s6 == 0 {
		t.Error("no S6 rows in the table")
	}
	for _, side := range []string{"stock ", "stock-tuned", "local ", "nixfarm "} {
		if !strings.Contains(stderr.String(), "S1 "+side) {
			t.Errorf("no S1 progress line for %q", side)
		}
	}
	// S9's builders fetched the closure from nginx (the bench fails the
	// run otherwise), and the farm's views say so.
	for _, want := range []string{"S9 stock       run 0:", "S9 nixfarm     run 0:"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("no S9 progress line %q", want)
		}
	}
}
