// Package server assembles a running farm from its parts: the state
// directory, the database, the farm store, the coordinator, the built-in
// worker and the SSH front end. cmd/nixfarm's serve command is a thin layer
// over it.
package server

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/agent"
	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/buildusers"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/sshd"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/substituter"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// Config is the configuration of `nixfarm serve`.
type Config struct {
	// StateDir holds the database, NAR blobs, logs and the host key.
	StateDir string
	// SSHListen is the SSH address for clients, such as ":2222".
	SSHListen string
	// AuthorizedKeys is an OpenSSH authorized_keys file ("" =
	// <StateDir>/authorized_keys).
	AuthorizedKeys string
	// SyncDelay is how long after registration a NAR is synced to disk
	// (0: at once); NARs not synced yet are checked after a crash.
	SyncDelay time.Duration
	// SSHCiphers are the ciphers the SSH endpoint offers (default
	// sshd.DefaultCiphers).
	SSHCiphers []string
	// SSHLimits bound the SSH endpoint's connections (in all,
	// unauthenticated per source address, per account) and how long one
	// may take to authenticate or stay without a session; the agent
	// listener takes the total, per-source and handshake limits too.
	// Zero fields take sshd's defaults.
	SSHLimits sshd.Limits
	// LocalWorker enables the built-in worker.
	LocalWorker bool
	// LocalStore is the Nix store URI the built-in worker builds in (""
	// = <StateDir>/worker-store, a chroot store).
	LocalStore string
	// LocalJobs is how many builds the built-in worker runs at once.
	LocalJobs int
	// BuildUsersGroup is the group whose members the built-in worker's
	// Nix builds as when nixfarm runs as root (buildusers.DefaultGroup
	// if empty, created when missing); the machine's own group (nixbld)
	// shares its users, with the jobs capped below those free at start.
	BuildUsersGroup string
	// WarmSessions is how many nix-store --serve sessions the built-in
	// worker and each static worker keep started ahead of need.
	WarmSessions int
	// NixStore is the nix-store binary the built-in worker runs.
	NixStore string
	// Machines is a Nix machines file of static workers, driven over SSH.
	Machines string
	// WorkerListen is the address `nixfarm worker` agents dial ("" = no
	// agents); each presents its own credential (`nixfarm workers add`).
	WorkerListen string
	// HTTPListen serves the API (`nixfarm workers` reads it) and the
	// binary cache (cache.go); "" = none.
	HTTPListen string
	// Substituters are the upstream binary caches the farm fetches paths
	// from, in order of preference (none if empty).
	Substituters []string
	// TrustedPublicKeys ("name:base64") sign what the farm accepts from
	// them; every account trusts them unless it untrusts one.
	TrustedPublicKeys []string
	// PublicCache lets anonymous requests read the paths the farm signed
	// from the binary cache.
	PublicCache bool
	// CacheCompression is what the binary cache's narinfos offer: "zstd"
	// (default), "xz" or "none".
	CacheCompression string
	// Scheduler tunes placement, retries and grace periods.
	Scheduler scheduler.Config
	// Limits are the default limits of accounts (nil:
	// account.DefaultValues); `nixfarm accounts set-limits` sets an
	// account's own.
	Limits *account.Values
	// CancelOnDisconnect stops a build when its last client goes away.
	CancelOnDisconnect bool
	// BuildRetention is how long build records and their logs are kept
	// after the build ends (0: for ever); pruned hourly (builds_api.go).
	BuildRetention time.Duration
	// Version is nixfarm's version, shown to ssh-ng:// clients.
	Version string
	Log     *slog.Logger
	// Out receives the set-up instructions printed at start.
	Out io.Writer
}

// Farm is a started farm.
type Farm struct {
	cfg   Config
	db    *sql.DB
	store *store.Local
	// signingKey is the public half of the key that signs outputs.
	signingKey signature.PublicKey
	// upstreamKeys sign what the farm fetches from upstream caches, and
	// substituter fetches it (nil: no upstream caches); caches.go.
	upstreamKeys []signature.PublicKey
	// accountKeys sign what the farm built for each account from a
	// derivation it could not check (account/signing.go).
	accountKeys *account.SigningKeys
	substituter *substituter.Substituter
	// apiToken admits API requests to account data (api.go).
	apiToken string
	// accounts holds accounts, keys and limits; uploads and outputs are
	// the store's views with the limits on uploads and on build outputs.
	accounts *account.Service
	uploads  *account.Views
	outputs  *account.Views
	sched    *scheduler.Scheduler
	coord    *coordinator.Coordinator
	// queue is the scheduler's queue listing shared by /api/v1/queue, the
	// dashboard and `nixfarm queue` over SSH (queue_cache.go).
	queueOnce sync.Once
	queue     *queueSnapshot
	records   *records.Service
	ssh       *sshd.Server
	ln        net.Listener
	agents    *agent.Server
	agentLn   net.Listener
	httpSrv   *http.Server
	httpLn    net.Listener
	log       *slog.Logger
	hostKey   ssh.PublicKey
	// executors are the built-in and static workers' executors, whose
	// warm sessions end with the farm.
	executors []*worker.Executor
	// metrics are served on the HTTP API's /metrics.
	metrics *metrics.Farm
}

// Start opens the state, builds the components and starts listening; Serve
// then runs it.
func Start(ctx context.Context, cfg Config) (*Farm, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if cfg.StateDir == "" {
		return nil, errors.New("a state directory is required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	if cfg.AuthorizedKeys == "" {
		cfg.AuthorizedKeys = filepath.Join(cfg.StateDir, "authorized_keys")
	}
	if err := ensureAuthorizedKeys(cfg.AuthorizedKeys, log); err != nil {
		return nil, err
	}
	if cfg.LocalStore == "" {
		cfg.LocalStore = filepath.Join(cfg.StateDir, "worker-store")
	}
	if cfg.LocalJobs < 1 {
		cfg.LocalJobs = 1
	}
	if cfg.NixStore == "" {
		cfg.NixStore = "nix-store"
	}
	if cfg.LocalWorker {
		if _, err := exec.LookPath(cfg.NixStore); err != nil {
			return nil, fmt.Errorf("the built-in worker needs Nix, but %s was not found (Debian: apt-get install nix-bin), or run with --local-worker=false: %w", cfg.NixStore, err)
		}
	}

	database, err := db.Open(ctx, filepath.Join(cfg.StateDir, "nixfarm.db"))
	if err != nil {
		return nil, err
	}
	f := &Farm{cfg: cfg, db: database, log: log}
	if err := f.init(ctx); err != nil {
		database.Close()
		return nil, err
	}
	return f, nil
}

func (f *Farm) init(ctx context.Context) error {
	cfg := f.cfg
	blobs, err := blob.NewDir(filepath.Join(cfg.StateDir, "nar"))
	if err != nil {
		return err
	}
	tmp := filepath.Join(cfg.StateDir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	f.metrics = metrics.New(f.log)
	f.store = store.NewLocal(f.db, blobs)
	f.metrics.WatchStore(f.store, nil)
	f.store.Log = f.log
	f.store.SyncDelay = cfg.SyncDelay
	key, created, err := loadOrCreateSigningKey(filepath.Join(cfg.StateDir, "signing-key"))
	if err != nil {
		return err
	}
	f.store.Key = &key
	if f.apiToken, err = loadOrCreateAPIToken(filepath.Join(cfg.StateDir, "api-token")); err != nil {
		return err
	}
	f.signingKey = key.Public()
	if created {
		f.log.Info("created the farm's signing key; it signs the outputs whose paths the farm checked", "public_key", f.signingKey.String())
	}
	rec, err := f.store.Recover(ctx)
	if err != nil {
		return fmt.Errorf("checking the farm store after the last stop: %w", err)
	}
	if len(rec.Removed) > 0 {
		f.log.Warn("NARs not on disk after a crash: their paths were unregistered and will be uploaded or built again",
			"checked", rec.Checked, "removed", len(rec.Removed), "paths", rec.Removed)
	} else if rec.Checked > 0 {
		f.log.Info("NARs written just before the last stop are intact", "checked", rec.Checked)
	}
	limits := account.DefaultValues()
	if cfg.Limits != nil {
		limits = *cfg.Limits
	}
	f.accounts = account.New(f.db, limits, f.log)
	f.accountKeys = &account.SigningKeys{Farm: key, Accounts: f.accounts}
	f.store.AccountKey = f.accountKeys.For
	f.uploads = &account.Views{Store: f.store, Accounts: f.accounts, Size: account.UploadSize}
	f.outputs = &account.Views{Store: f.store, Accounts: f.accounts, Size: account.OutputSize}
	schedCfg := cfg.Scheduler
	schedCfg.Log = f.log
	schedCfg.Metrics = f.metrics
	schedCfg.Limits = func(acct string) scheduler.AccountLimits {
		l := f.accounts.Limits(context.Background(), acct)
		return scheduler.AccountLimits{MaxRunning: int(l.Get(account.ConcurrentBuilds)), MaxQueued: int(l.Get(account.QueuedBuilds))}
	}
	f.sched = scheduler.New(schedCfg)
	f.metrics.WatchScheduler(f.sched)
	if err := f.addLocalWorker(ctx); err != nil {
		return err
	}
	if err := f.addStaticWorkers(tmp); err != nil {
		return err
	}
	if err := f.initUpstream(); err != nil {
		return err
	}
	opts := coordinator.Options{CancelOnDisconnect: cfg.CancelOnDisconnect, LimitLog: f.accounts.LimitLog,
		TrustedKeys: f.accounts.TrustedKeys, Metrics: f.metrics, Log: f.log}
	if f.substituter != nil {
		opts.Substituter = f.substituter
	}
	coord, err := coordinator.New(f.outputs, f.sched, f.db, filepath.Join(cfg.StateDir, "logs"), opts)
	if err != nil {
		return err
	}
	f.coord = coord
	f.records = records.New(f.db, filepath.Join(cfg.StateDir, "logs"), nil)
	serve := &serveproto.Server{Store: f.uploads, Builds: coord, Log: f.log, TempDir: tmp, Traffic: coord}
	daemon := &daemonproto.Server{Store: f.uploads, Builds: coord, Log: f.log, TempDir: tmp, NixVersion: "nixfarm-" + cfg.Version, Traffic: coord}
	if f.substituter != nil {
		serve.Upstream, daemon.Upstream = coord, coord
	}

	hostKey, created, err := sshd.LoadOrCreateHostKey(filepath.Join(cfg.StateDir, "ssh_host_ed25519_key"))
	if err != nil {
		return err
	}
	f.hostKey = hostKey.PublicKey()
	if created {
		f.log.Info("generated a new SSH host key", "fingerprint", ssh.FingerprintSHA256(f.hostKey))
	}
	f.ssh, err = sshd.New(sshd.Config{
		HostKey:            hostKey,
		AuthorizedKeysFile: cfg.AuthorizedKeys,
		Keys:               f.accounts,
		Ciphers:            cfg.SSHCiphers,
		Limits:             cfg.SSHLimits,
		Metrics:            f.metrics,
		Handler:            &execHandler{serve: serve, daemon: daemon, accounts: f.accounts, keys: f.accountKeys, sched: f.sched, queueList: f.sharedQueue(), records: f.records, log: f.log},
		Log:                f.log,
	})
	if err != nil {
		return err
	}
	if cfg.WorkerListen != "" {
		if err := f.initAgents(hostKey); err != nil {
			return err
		}
	}
	if cfg.HTTPListen != "" {
		f.httpLn, err = net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("listening for HTTP: %w", err)
		}
		cache, err := f.binaryCache()
		if err != nil {
			return err
		}
		f.httpSrv = &http.Server{Handler: f.api(cache), ReadHeaderTimeout: 10 * time.Second}
	}
	f.ln, err = net.Listen("tcp", cfg.SSHListen)
	if err != nil {
		return fmt.Errorf("listening for SSH: %w", err)
	}
	return nil
}

// addLocalWorker registers the built-in worker, with what the local Nix
// says it can build.
func (f *Farm) addLocalWorker(ctx context.Context) error {
	if !f.cfg.LocalWorker {
		return nil
	}
	caps := worker.Capabilities{Systems: []string{nixSystem()}, SpeedFactor: 1}
	nc, err := worker.DetectNix(ctx, "")
	if err != nil {
		f.log.Warn("could not ask the local Nix what it builds; assuming this machine's system, no features and build users group nixbld", "err", err)
		nc.BuildUsersGroup = "nixbld"
	} else {
		caps.Systems = nc.Systems()
		caps.SupportedFeatures = nc.SystemFeatures
	}
	transport := &worker.Local{NixStore: f.cfg.NixStore, StoreURI: f.cfg.LocalStore,
		Meter: worker.LocalMeter(f.cfg.LocalStore, f.log.With("worker", "local"))}
	if err := f.planBuildUsers(ctx, nc, transport); err != nil {
		return err
	}
	if err := f.sandboxLocalWorker(ctx, transport); err != nil {
		return err
	}
	caps.MaxJobs = f.cfg.LocalJobs
	executor := f.newExecutor("local", transport)
	// Open the worker's store once now, before builds run at once.
	if err := executor.Check(ctx); err != nil {
		f.log.Warn("the built-in worker's nix-store --serve does not answer; its builds will fail until it does", "err", err)
	}
	return f.sched.AddWorker(scheduler.Worker{Name: "local", Kind: "local", Caps: caps, Builder: executor})
}

// planBuildUsers decides which users the built-in worker builds as (see
// package buildusers), caps its jobs accordingly and sets its Nix's
// build-users-group.
func (f *Farm) planBuildUsers(ctx context.Context, nc worker.NixConfig, transport *worker.Local) error {
	root := os.Geteuid() == 0
	machine, daemon := worker.MachineStore(f.cfg.LocalStore, root)
	plan, err := buildusers.Configure(ctx, buildusers.Host{}, buildusers.Request{
		Root: root, Group: f.cfg.BuildUsersGroup, NixGroup: nc.BuildUsersGroup,
		MachineStore: machine, Daemon: daemon, Jobs: f.cfg.LocalJobs,
	}, f.log.With("worker", "local"))
	if err != nil {
		return fmt.Errorf("the built-in worker's build users: %w", err)
	}
	f.cfg.LocalJobs = plan.Jobs
	transport.Options = plan.Settings()
	return nil
}

// sandboxLocalWorker makes the built-in worker build only in Nix's
// sandbox, whatever nix.conf says, and refuses to start the farm if Nix
// cannot sandbox builds here: an unsandboxed build could write to the
// host, read the farm's processes and reach its ports.
func (f *Farm) sandboxLocalWorker(ctx context.Context, transport *worker.Local) error {
	root := os.Geteuid() == 0
	_, daemon := worker.MachineStore(f.cfg.LocalStore, root)
	check := worker.NewSandboxCheck("", root, daemon)
	if err := check.Run(ctx); err != nil {
		return fmt.Errorf("the built-in worker must build in Nix's sandbox: %w", err)
	}
	if transport.Options == nil {
		transport.Options = map[string]string{}
	}
	for k, v := range worker.SandboxSettings() {
		transport.Options[k] = v
	}
	shell := worker.SandboxShell(check.SandboxPaths, "/bin/busybox", "/usr/bin/busybox")
	if shell != "" {
		transport.Options["extra-sandbox-paths"] = shell
	}
	f.log.Info("built-in worker: sandbox on", "store", f.cfg.LocalStore, "daemon", daemon, "sandbox_shell", shell)
	return nil
}

// newExecutor returns an executor for a worker of the farm's own, which
// keeps its warm sessions until the farm stops.
func (f *Farm) newExecutor(name string, transport worker.Transport) *worker.Executor {
	e := worker.NewExecutor(name, f.outputs, transport, f.log)
	e.Warm = f.cfg.WarmSessions
	f.executors = append(f.executors, e)
	return e
}

// addStaticWorkers registers the machines of the machines file.
func (f *Farm) addStaticWorkers(tmp string) error {
	if f.cfg.Machines == "" {
		return nil
	}
	machines, err := worker.ReadMachinesFile(f.cfg.Machines, nixSystem())
	if err != nil {
		return err
	}
	sshOpts := strings.Fields(os.Getenv("NIX_SSHOPTS"))
	seen := map[string]int{}
	for _, m := range machines {
		if m.MaxJobs == 0 {
			f.log.Warn("machine has max jobs 0; skipping it, as Nix does", "machine", m.URI)
			continue
		}
		name := m.Host
		if seen[name]++; seen[name] > 1 {
			name = fmt.Sprintf("%s#%d", name, seen[name])
		}
		transport := &worker.SSH{Host: m.Host, Key: m.SSHKey, HostKey: m.HostKey, RemoteProgram: m.RemoteProgram,
			RemoteStore: m.RemoteStore, Options: sshOpts, TempDir: tmp}
		if err := f.sched.AddWorker(scheduler.Worker{Name: name, Kind: "static", Caps: m.Capabilities,
			Builder: f.newExecutor(name, transport)}); err != nil {
			return err
		}
	}
	return nil
}

// initAgents starts listening for `nixfarm worker` agents.
func (f *Farm) initAgents(hostKey ssh.Signer) error {
	old := filepath.Join(f.cfg.StateDir, "worker-token")
	if _, err := os.Stat(old); err == nil {
		f.log.Warn("the shared join token is no longer accepted: each worker needs its own credential (nixfarm workers add NAME); the file can be deleted", "path", old)
	}
	var err error
	f.agents, err = agent.NewServer(agent.ServerConfig{HostKey: hostKey, Credentials: credentials.New(f.db, nil),
		Farm: f.outputs, Registry: f.sched, Limits: f.cfg.SSHLimits, Metrics: f.metrics, Log: f.log})
	if err != nil {
		return err
	}
	f.agentLn, err = net.Listen("tcp", f.cfg.WorkerListen)
	if err != nil {
		return fmt.Errorf("listening for workers: %w", err)
	}
	return nil
}

const authorizedKeysHeader = `# nixfarm authorized keys: one OpenSSH public key per line.
# The comment after the key names the account, e.g.
#   ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice
# nixfarm re-reads this file when it changes; no restart is needed.
`

// ensureAuthorizedKeys creates an empty authorized_keys file with
// instructions if there is none, so a first start works.
func ensureAuthorizedKeys(path string, log *slog.Logger) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("authorized keys: %w", err)
	}
	if err := os.WriteFile(path, []byte(authorizedKeysHeader), 0o600); err != nil {
		return fmt.Errorf("creating authorized keys: %w", err)
	}
	log.Warn("created an empty authorized_keys file: add your clients' public keys to it", "path", path)
	return nil
}

// Addr returns the SSH listener's address.
func (f *Farm) Addr() net.Addr { return f.ln.Addr() }

// HostKey returns the SSH host key.
func (f *Farm) HostKey() ssh.PublicKey { return f.hostKey }

// Serve runs until ctx ends, then closes everything: the listeners first,
// then the running builds, then the database.
func (f *Farm) Serve(ctx context.Context) error {
	defer f.db.Close()
	defer func() {
		if err := f.store.Flush(context.Background()); err != nil {
			f.log.Error("syncing the farm store to disk", "err", err)
		}
	}()
	defer func() {
		for _, e := range f.executors {
			e.Close()
		}
	}()
	defer f.coord.Wait()
	defer f.sched.Close()
	f.log.Info("nixfarm serving", "ssh", f.ln.Addr().String(), "host_key", ssh.FingerprintSHA256(f.hostKey),
		"local_worker", f.cfg.LocalWorker, "local_store", f.cfg.LocalStore, "local_jobs", f.cfg.LocalJobs)
	if f.cfg.Out != nil {
		f.PrintInstructions(f.cfg.Out)
	}
	var wg sync.WaitGroup
	if f.agents != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.agents.Serve(ctx, f.agentLn); err != nil {
				f.log.Error("worker listener failed", "err", err)
			}
		}()
		f.log.Info("listening for workers", "addr", f.agentLn.Addr().String())
	}
	if f.httpSrv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.httpSrv.Serve(f.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				f.log.Error("HTTP listener failed", "err", err)
			}
		}()
		stop := context.AfterFunc(ctx, func() { f.httpSrv.Close() })
		defer stop()
		f.log.Info("serving the API", "url", "http://"+f.httpLn.Addr().String())
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.pruneBuilds(ctx)
	}()
	err := f.ssh.Serve(ctx, f.ln)
	wg.Wait()
	return err
}

// PrintInstructions writes what a client needs: the builders line with the
// base64 host key, and the ssh config block.
func (f *Farm) PrintInstructions(w io.Writer) {
	host, port := "farm.example.org", "2222"
	if h, p, err := net.SplitHostPort(f.ln.Addr().String()); err == nil {
		port = p
		if ip := net.ParseIP(h); ip != nil && !ip.IsUnspecified() {
			host = h
		} else if name, err := os.Hostname(); err == nil {
			host = name
		}
	}
	line := ssh.MarshalAuthorizedKey(f.hostKey) // "ssh-ed25519 AAAA...\n"
	hostKeyB64 := base64.StdEncoding.EncodeToString(line[:len(line)-1])
	jobs := f.cfg.LocalJobs
	fmt.Fprintf(w, `nixfarm is ready.

Host key: %s
          %s

The quick way: on the client (with nixfarm installed there), as root when
builds go through nix-daemon:

     nixfarm client-config --farm %s --apply    # key, builders line, ssh config
     nixfarm doctor                              # checks every step, with test builds

Or by hand:

1. On the client, as the user that runs builds (root, when builds go through
   nix-daemon), create a key and authorize it here, naming its account:

     ssh-keygen -t ed25519 -N '' -f /root/.ssh/nixfarm_ed25519
     # then, on the farm: nixfarm accounts add alice --state-dir %s
     #   nixfarm keys add --account alice --state-dir %s nixfarm_ed25519.pub
     # or append /root/.ssh/nixfarm_ed25519.pub to %s,
     # with the account name as the comment: ssh-ed25519 AAAA... alice

2. Add to that user's ssh config (/root/.ssh/config):

Host nixfarm
    HostName %s
    Port %s
    User nixfarm
    IdentityFile /root/.ssh/nixfarm_ed25519
    IdentitiesOnly yes
    # Nix checks the host key from the builders line under the name "nixfarm":
    HostKeyAlias nixfarm

3. Use it as a builder, in nix.conf ("builders = ...", and "builders-use-substitutes
   = true" so the farm fetches from its upstream caches what they have rather than
   your machine uploading it) or on the command line.
   ssh-ng:// is the daemon protocol; ssh:// the older serve protocol. Both work:

ssh-ng://nixfarm %s - %d 1 - - %s
ssh://nixfarm %s - %d 1 - - %s

   nix-build --max-jobs 0 --builders 'ssh-ng://nixfarm %s - %d 1 - - %s' ...

4. Or use it as a remote store: evaluate locally, build everything on the farm,
   download nothing:

   nix build --store 'ssh-ng://nixfarm?base64-ssh-public-host-key=%s' --eval-store auto ...
`,
		ssh.FingerprintSHA256(f.hostKey), line[:len(line)-1],
		net.JoinHostPort(host, port),
		f.cfg.StateDir, f.cfg.StateDir, f.cfg.AuthorizedKeys,
		host, port,
		nixSystem(), jobs, hostKeyB64,
		nixSystem(), jobs, hostKeyB64,
		nixSystem(), jobs, hostKeyB64,
		hostKeyB64)
	fmt.Fprintf(w, `
The farm signs with this key the outputs whose paths it checked itself (remote-
store builds of .drv files it verified, and content-addressed outputs) and what it
fetched from upstream caches. To trust them (for example when copying them into a
store that requires signatures), add to the client's nix.conf:

   extra-trusted-public-keys = %s
`, f.signingKey)
	f.printCacheInstructions(w, host)
	if f.agentLn != nil {
		_, port, _ := net.SplitHostPort(f.agentLn.Addr().String())
		fmt.Fprintf(w, `
Build machines join the farm each with a credential of its own. Here, issue
one per machine (it is printed once; copy it to the machine, mode 0600):

   nixfarm workers add builder-1 --state-dir %s > builder-1.credential

and on the machine:

   nixfarm worker --coordinator %s:%s --name builder-1 --credential-file /etc/nixfarm/worker.credential --coordinator-host-key '%s'

"nixfarm workers revoke builder-1 --state-dir %s" withdraws it and disconnects the machine.
`, f.cfg.StateDir, host, port, ssh.FingerprintSHA256(f.hostKey), f.cfg.StateDir)
	}
}

// nixSystem names this machine's Nix system, e.g. x86_64-linux.
func nixSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}
