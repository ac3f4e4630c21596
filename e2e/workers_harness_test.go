package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// startCoordinator starts a farm without the built-in worker that
// accepts agents with a token in its directory.
func startCoordinator(t *testing.T, extraArgs ...string) *farm {
	t.Helper()
	dir := t.TempDir()
	token := filepath.Join(dir, "worker-token")
	if err := os.WriteFile(token, []byte("e2e-join-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--local-worker=false", "--worker-listen", "127.0.0.1:0", "--worker-token-file", token}, extraArgs...)
	f := startFarm(t, args...)
	f.tokenFile = token
	if f.workerAddr == "" {
		t.Fatalf("the coordinator did not say where workers connect:\n%s", f.logs())
	}
	return f
}

// agent is a running `nixfarm worker`.
type agent struct {
	t     *testing.T
	f     *farm
	name  string
	args  []string
	store string
	cmd   *exec.Cmd
	mu    sync.Mutex
	out   bytes.Buffer
	done  chan struct{}
}

// startAgent starts `nixfarm worker` named name with its own chroot store.
func startAgent(t *testing.T, f *farm, name string, args ...string) *agent {
	t.Helper()
	a := &agent{t: t, f: f, name: name, args: args, store: filepath.Join(t.TempDir(), "store")}
	a.start()
	t.Cleanup(a.stop)
	return a
}

func (a *agent) start() {
	a.t.Helper()
	args := append([]string{"worker",
		"--coordinator", a.f.workerAddr,
		"--token-file", a.f.tokenFile,
		"--name", a.name,
		"--store", a.store,
		"--log-level", "debug",
	}, a.args...)
	cmd := exec.Command(nixfarmBin, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.cmd = cmd
	a.done = make(chan struct{})
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			a.mu.Lock()
			a.out.WriteString(sc.Text() + "\n")
			a.mu.Unlock()
		}
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		<-scanned
		close(a.done)
	}()
}

// kill ends the agent with SIGKILL, as a crash would.
func (a *agent) kill() {
	a.cmd.Process.Kill()
	<-a.done
}

func (a *agent) stop() {
	select {
	case <-a.done:
	default:
		a.cmd.Process.Signal(os.Interrupt)
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.done
		}
	}
	if a.t.Failed() {
		a.mu.Lock()
		a.t.Logf("worker %s output:\n%s", a.name, a.out.String())
		a.mu.Unlock()
	}
}

// workers asks the coordinator's API for its workers.
func (f *farm) workers() []scheduler.WorkerInfo {
	f.t.Helper()
	resp, err := http.Get(f.apiURL + "/api/v1/workers")
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Workers []scheduler.WorkerInfo `json:"workers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		f.t.Fatal(err)
	}
	return list.Workers
}

// waitWorkers waits until the named workers are registered.
func (f *farm) waitWorkers(names ...string) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		have := map[string]bool{}
		for _, w := range f.workers() {
			have[w.Name] = true
		}
		missing := 0
		for _, n := range names {
			if !have[n] {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("workers %v did not all register; the farm has %v\n%s", names, have, f.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// builtBy counts successful builds per worker.
func (f *farm) builtBy() map[string]int {
	f.t.Helper()
	rows, err := f.db().Query(`SELECT worker, count(*) FROM builds WHERE status = 0 GROUP BY worker`)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var w string
		var n int
		rows.Scan(&w, &n)
		out[w] = n
	}
	return out
}

// workerOf returns the worker that built the derivation named name.
func (f *farm) workerOf(name string) string {
	f.t.Helper()
	var w string
	if err := f.db().QueryRow(`SELECT worker FROM builds WHERE drv_path LIKE ? AND status = 0`, "%-"+name+".drv").Scan(&w); err != nil {
		f.t.Fatalf("no successful build of %s: %v", name, err)
	}
	return w
}

// buildersLine is a builders entry for the farm with the given systems and
// supported features.
func (f *farm) buildersLine(scheme, systems, features string, jobs int) string {
	if features == "" {
		features = "-"
	}
	return fmt.Sprintf("%s://nixfarm %s - %d 1 %s - %s", scheme, systems, jobs, features, f.hostKeyB64)
}
