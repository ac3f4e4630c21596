// Package metrics is the farm's metrics, in Prometheus's text format on
// the HTTP API's /metrics. It owns one registry (never Prometheus's
// global one) and every series' definition, and gives the other packages
// small hooks to call where things happen. Every hook is a method of a
// *Farm that does nothing on a nil *Farm, so a package works, and is
// tested, without metrics. What is sampled rather than counted (queue
// depth, worker slots, store size) is collected at scrape time from the
// scheduler and the store (collect.go).
//
// No series carries an account name or a store path: /metrics is served
// without credentials. Workers are named, since the farm's operator names
// them.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/records"
)

const namespace = "nixfarm"

// Statuses is the vocabulary of a build's final status (label status of
// nixfarm_builds_total).
var Statuses = []string{"built", "failed", "timed-out", "cancelled", "infrastructure-error", "substituted", "cached"}

// HandshakeReasons are the reasons an SSH connection fails before it is
// authenticated (label reason of nixfarm_ssh_handshake_failures_total):
// every key it offered was refused, it took too long, it broke the
// protocol (or left before offering a key), or a connection cap refused it.
var HandshakeReasons = []string{"refused-key", "timeout", "protocol", "caps"}

// AgentHandshakeReasons are the same for the agent listener, where a
// `nixfarm worker` logs in with its credential rather than a key:
// refused-credential instead of refused-key.
var AgentHandshakeReasons = []string{"refused-credential", "timeout", "protocol", "caps"}

// Listeners name the SSH listeners (label listener of the ssh_connections
// and ssh_handshake_failures series): the client listener (nixfarm serve's
// --listen, where Nix clients connect) and the agent listener
// (--worker-listen, where `nixfarm worker` agents dial in).
//
// The series kept their names and gained the label rather than becoming
// new agent_* series: sum() over listener is meaningful (every SSH
// connection the farm took), a dashboard's sum(rate(...)) keeps working,
// and {listener="client"} is what the series counted before.
const (
	ListenerClient = "client"
	ListenerAgent  = "agent"
)

// CacheKinds are what the binary cache serves (label kind of
// nixfarm_binary_cache_hits_total).
var CacheKinds = []string{"narinfo", "nar"}

// SubstitutionResults are the outcomes of fetching a path from an
// upstream cache (label result of nixfarm_substitutions_total).
var SubstitutionResults = []string{"ok", "refused", "failed"}

// Buckets of the build duration histogram, in seconds: from a trivial
// build to eight hours.
var DurationBuckets = []float64{0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800}

// Buckets of the queue time histogram, in seconds: from a free worker at
// once to four hours in the queue.
var QueueBuckets = []float64{0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 600, 1800, 3600, 7200, 14400}

// Farm holds the farm's metrics. Its hooks are safe for concurrent use
// and do nothing on a nil *Farm.
type Farm struct {
	reg *prometheus.Registry
	log *slog.Logger

	builds        *prometheus.CounterVec
	buildDuration prometheus.Histogram
	queueTime     prometheus.Histogram
	retries       prometheus.Counter
	workerLosses  *prometheus.CounterVec
	quarantines   *prometheus.CounterVec

	sshConns      *prometheus.CounterVec
	sshOpen       *prometheus.GaugeVec
	sshHandshake  *prometheus.CounterVec
	sshBytesIn    prometheus.Counter
	sshBytesOut   prometheus.Counter
	cacheHits     *prometheus.CounterVec
	substitutions *prometheus.CounterVec
	traffic       traffic // traffic.go

	// The counters of each fixed label value, looked up without the
	// vectors' locks.
	fixed map[*prometheus.CounterVec]map[string]prometheus.Counter
}

// New returns a farm's metrics in a registry of their own, with the Go
// runtime's and the process's series.
func New(log *slog.Logger) *Farm {
	if log == nil {
		log = slog.Default()
	}
	f := &Farm{reg: prometheus.NewRegistry(), log: log}
	f.builds = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "builds_total",
		Help: "Builds recorded, by final status: built, failed, timed-out, cancelled, infrastructure-error, substituted, cached."}, []string{"status"})
	f.buildDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "build_duration_seconds",
		Help: "How long builds that a worker ran took, from start to end, whatever their outcome.", Buckets: DurationBuckets})
	f.queueTime = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "build_queue_seconds",
		Help: "How long builds waited in the queue before their first attempt started.", Buckets: QueueBuckets})
	f.retries = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "build_retries_total",
		Help: "Build attempts that failed for a reason other than the build and were retried on another worker."})
	f.workerLosses = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "worker_losses_total",
		Help: "Workers lost, by worker: an agent that went without saying goodbye (dropped connection, heartbeats stopped), or left with builds running."}, []string{"worker"})
	f.quarantines = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "worker_quarantines_total",
		Help: "Times a worker was quarantined after consecutive failures, by worker."}, []string{"worker"})
	f.sshConns = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "ssh_connections_total",
		Help: "SSH connections accepted, refused ones included, by listener: client, agent."}, []string{"listener"})
	f.sshOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "ssh_connections_open",
		Help: "SSH connections open, by listener: client, agent."}, []string{"listener"})
	f.sshHandshake = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "ssh_handshake_failures_total",
		Help: "SSH connections that ended before authenticating, by listener and reason: refused-key (client), refused-credential (agent), timeout, protocol, caps."},
		[]string{"listener", "reason"})
	f.sshBytesIn = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "ssh_bytes_in_total",
		Help: "Bytes clients sent to their commands over SSH (counted when each command ends)."})
	f.sshBytesOut = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "ssh_bytes_out_total",
		Help: "Bytes commands sent to their clients over SSH, stdout only (counted when each command ends)."})
	f.cacheHits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "binary_cache_hits_total",
		Help: "Binary cache requests served, by kind: narinfo, nar."}, []string{"kind"})
	f.substitutions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "substitutions_total",
		Help: "Paths fetched from upstream caches, per attempt on one cache, by result: ok, refused (the farm would not take it), failed."}, []string{"result"})
	f.reg.MustRegister(f.builds, f.buildDuration, f.queueTime, f.retries, f.workerLosses, f.quarantines,
		f.sshConns, f.sshOpen, f.sshHandshake, f.sshBytesIn, f.sshBytesOut, f.cacheHits, f.substitutions,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f.registerTraffic()
	// Every label value shows at 0 from the start, so that rates and
	// increases see the first event.
	f.fixed = map[*prometheus.CounterVec]map[string]prometheus.Counter{}
	var handshakes []string
	for _, r := range HandshakeReasons {
		handshakes = append(handshakes, ListenerClient+labelSep+r)
	}
	for _, r := range AgentHandshakeReasons {
		handshakes = append(handshakes, ListenerAgent+labelSep+r)
	}
	for vec, values := range map[*prometheus.CounterVec][]string{f.builds: Statuses, f.sshHandshake: handshakes,
		f.cacheHits: CacheKinds, f.substitutions: SubstitutionResults, f.sshConns: {ListenerClient, ListenerAgent}} {
		m := map[string]prometheus.Counter{}
		for _, v := range values {
			m[v] = vec.WithLabelValues(strings.Split(v, labelSep)...)
		}
		f.fixed[vec] = m
	}
	f.sshOpen.WithLabelValues(ListenerClient)
	f.sshOpen.WithLabelValues(ListenerAgent)
	return f
}

// labelSep joins the label values of a fixed counter's key.
const labelSep = "\x00"

// inc adds one to vec's counter of the label values vs.
func (f *Farm) inc(vec *prometheus.CounterVec, vs ...string) {
	if c, ok := f.fixed[vec][strings.Join(vs, labelSep)]; ok {
		c.Inc()
		return
	}
	vec.WithLabelValues(vs...).Inc()
}

// Registry returns the farm's registry (nil for a nil *Farm).
func (f *Farm) Registry() *prometheus.Registry {
	if f == nil {
		return nil
	}
	return f.reg
}

// Handler serves the metrics in Prometheus's formats. At most a few
// scrapes run at once (more get 503), each within 10 s; a collector's
// failure is logged and the other series are still served. A nil *Farm's
// handler answers 404.
func (f *Farm) Handler() http.Handler {
	if f == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(f.reg, promhttp.HandlerOpts{
		ErrorLog:            slogAdapter{f.log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) { a.log.Warn("metrics: collecting", "err", v) }

// Status names a build's final status in the vocabulary of Statuses:
// err (the build could not run) is cancelled if a context ended it and
// an infrastructure error otherwise; a MiscFailure is the farm's doing
// (no worker could run it, or an account's limit), so an infrastructure
// error; other failures are the build's own.
func Status(res *build.Result, err error) string {
	switch {
	case err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return string(records.Cancelled)
	case err != nil || res == nil:
		return string(records.InfrastructureError)
	}
	// The same words as the build records, from the same mapping.
	return string(records.StatusOf(res))
}

// BuildEnded counts a build by its final status (Status(res, err)) and,
// if a worker ran it, observes its duration.
func (f *Farm) BuildEnded(res *build.Result, err error) {
	if f == nil {
		return
	}
	f.inc(f.builds, Status(res, err))
	if err == nil && res != nil && res.Worker != "" && !res.StartTime.IsZero() && !res.StopTime.Before(res.StartTime) {
		f.buildDuration.Observe(res.StopTime.Sub(res.StartTime).Seconds())
	}
}

// BuildStarted observes how long a build waited for its first attempt.
func (f *Farm) BuildStarted(queued time.Duration) {
	if f == nil {
		return
	}
	f.queueTime.Observe(queued.Seconds())
}

// BuildRetried counts an attempt that will be retried on another worker.
func (f *Farm) BuildRetried() {
	if f == nil {
		return
	}
	f.retries.Inc()
}

// WorkerLost counts a worker that left the farm.
func (f *Farm) WorkerLost(worker string) {
	if f == nil {
		return
	}
	f.workerLosses.WithLabelValues(worker).Inc()
}

// WorkerQuarantined counts a worker quarantined.
func (f *Farm) WorkerQuarantined(worker string) {
	if f == nil {
		return
	}
	f.quarantines.WithLabelValues(worker).Inc()
}

// SSHConnOpened counts a connection accepted by the client listener;
// SSHConnClosed must follow when it closes.
func (f *Farm) SSHConnOpened() { f.ConnOpened(ListenerClient) }

// SSHConnClosed counts a client listener's connection closed.
func (f *Farm) SSHConnClosed() { f.ConnClosed(ListenerClient) }

// SSHHandshakeFailed counts a client listener's connection that ended
// before it authenticated; reason is one of HandshakeReasons.
func (f *Farm) SSHHandshakeFailed(reason string) { f.HandshakeFailed(ListenerClient, reason) }

// ConnOpened counts a connection accepted by listener (ListenerClient or
// ListenerAgent); ConnClosed must follow when it closes.
func (f *Farm) ConnOpened(listener string) {
	if f == nil {
		return
	}
	f.inc(f.sshConns, listener)
	f.sshOpen.WithLabelValues(listener).Inc()
}

// ConnClosed counts a connection of listener closed.
func (f *Farm) ConnClosed(listener string) {
	if f == nil {
		return
	}
	f.sshOpen.WithLabelValues(listener).Dec()
}

// HandshakeFailed counts a connection of listener that ended before it
// authenticated; reason is one of HandshakeReasons (client) or
// AgentHandshakeReasons (agent).
func (f *Farm) HandshakeFailed(listener, reason string) {
	if f == nil {
		return
	}
	f.inc(f.sshHandshake, listener, reason)
}

// SSHBytes counts the bytes a command read from and wrote to its client
// (all of them: traffic.go compares them with the builds' bytes).
func (f *Farm) SSHBytes(in, out int64) {
	if f == nil {
		return
	}
	f.sshBytesIn.Add(float64(in))
	f.sshBytesOut.Add(float64(out))
}

// CacheHit counts a binary cache response served; kind is one of
// CacheKinds.
func (f *Farm) CacheHit(kind string) {
	if f == nil {
		return
	}
	f.inc(f.cacheHits, kind)
}

// Substitution counts a path fetched, or not, from an upstream cache;
// result is one of SubstitutionResults, or "" for nothing to count.
func (f *Farm) Substitution(result string) {
	if f == nil || result == "" {
		return
	}
	f.inc(f.substitutions, result)
}
