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
// accepts agents.
func startCoordinator(t *testing.T, extraArgs ...string) *farm {
	t.Helper()
	args := append([]string{"--local-worker=false", "--worker-listen", "127.0.0.1:0"}, extraArgs...)
	f := startFarm(t, args...)
	if f.workerAddr == "" {
		t.Fatalf("the coordinator did not say where workers connect:\n%s", f.logs())
	}
	return f
}

// issue issues a credential for the worker name with `nixfarm workers
// add` beside the running farm, and returns the file holding it.
func (f *farm) issue(name string) string {
	f.t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(nixfarmBin, "workers", "add", name, "--state-dir", f.stateDir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		f.t.Fatalf("nixfarm workers add %s: %v\n%s", name, err, stderr.String())
	}
	file := filepath.Join(f.t.TempDir(), name+".credential")
	if err := os.WriteFile(file, out, 0o600); err != nil {
		f.t.Fatal(err)
	}
	return file
}

// agent is a running `nixfarm worker`.
type agent struct {
	t          *testing.T
	f          *farm
	name       string
	credential string // the credential file
	args       []string
	store      string
	cmd        *exec.Cmd
	mu         sync.Mutex
	out        bytes.Buffer
	done       chan struct{}
}

// startAgent starts `nixfarm worker` named name with its own chroot store
// and a credential issued for it.
func startAgent(t *testing.T, f *farm, name string, args ...string) *agent {
	t.Helper()
	return startAgentWith(t, f, name, f.issue(name), args...)
}

// startAgentWith starts `nixfarm worker` named name with the credential in
// the file given.
func startAgentWith(t *testing.T, f *farm, name, credential string, args ...string) *agent {
	t.Helper()
	a := &agent{t: t, f: f, name: name, credential: credential, args: args, store: filepath.Join(t.TempDir(), "store")}
	a.start()
	t.Cleanup(a.stop)
	return a
}

// output returns what the agent has printed so far.
func (a *agent) output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.out.String()
}

func (a *agent) start() {
	a.t.Helper()
	args := append([]string{"worker",
		"--coordinator", a.f.workerAddr,
		"--credential-file", a.credential,
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
