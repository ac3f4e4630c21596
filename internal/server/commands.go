package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/sshd"
)

// command is an exec request nixfarm understands.
type command struct {
	kind  commandKind
	write bool
	store string   // --store argument, accepted and ignored
	json  bool     // nixfarm whoami --json, nixfarm workers --json
	args  []string // nixfarm builds's flags
}

type commandKind int

const (
	cmdServe commandKind = iota + 1
	cmdDaemon
	cmdWhoami
	cmdWorkers
	cmdBuilds
	cmdUsage
	cmdSummary
	cmdLogs
	cmdTokens
	cmdQueue
	cmdHelp
)

// parseCommand matches an exec request exactly against the commands stock
// Nix sends: `nix-store --serve [--write] [--store URI]` for ssh:// and
// `nix-daemon --stdio [--store URI]` for ssh-ng://. The program may be given
// as a path (remote-program=/run/current-system/sw/bin/nix-store). Also
// `nixfarm whoami [--json]` and `nixfarm workers [--json]`, for people
// and for nixfarm client-config and doctor.
func parseCommand(line string) (command, error) {
	words, err := splitWords(line)
	if err != nil {
		return command{}, err
	}
	if len(words) == 0 {
		return command{}, errors.New("empty command")
	}
	if words[0] == "nixfarm" {
		switch {
		case len(words) == 2 && words[1] == "whoami":
			return command{kind: cmdWhoami}, nil
		case len(words) == 3 && words[1] == "whoami" && words[2] == "--json":
			return command{kind: cmdWhoami, json: true}, nil
		case len(words) == 2 && words[1] == "workers":
			return command{kind: cmdWorkers}, nil
		case len(words) == 3 && words[1] == "workers" && words[2] == "--json":
			return command{kind: cmdWorkers, json: true}, nil
		case len(words) >= 2 && words[1] == "builds":
			return command{kind: cmdBuilds, args: words[2:]}, nil // flags checked by builds
		case len(words) >= 2 && words[1] == "usage":
			return command{kind: cmdUsage, args: words[2:]}, nil
		case len(words) >= 2 && words[1] == "summary":
			return command{kind: cmdSummary, args: words[2:]}, nil
		case len(words) >= 2 && words[1] == "logs":
			return command{kind: cmdLogs, args: words[2:]}, nil // checked by logs
		case len(words) >= 2 && words[1] == "tokens":
			return command{kind: cmdTokens, args: words[2:]}, nil // checked by tokens
		case len(words) >= 2 && words[1] == "queue":
			return command{kind: cmdQueue, args: words[2:]}, nil // checked by queue
		case len(words) == 2 && (words[1] == "help" || words[1] == "--help" || words[1] == "-h"):
			return command{kind: cmdHelp}, nil
		}
		return command{}, fmt.Errorf("unknown nixfarm command %q", strings.Join(words[1:], " "))
	}
	var c command
	switch path.Base(words[0]) {
	case "nix-store":
		c.kind = cmdServe
	case "nix-daemon":
		c.kind = cmdDaemon
	default:
		return command{}, fmt.Errorf("unknown program %q", words[0])
	}
	seen := map[string]bool{}
	for i := 1; i < len(words); i++ {
		w := words[i]
		if seen[w] {
			return command{}, fmt.Errorf("%s given twice", w)
		}
		seen[w] = true
		switch {
		case w == "--serve" && c.kind == cmdServe:
		case w == "--write" && c.kind == cmdServe:
			c.write = true
		case w == "--stdio" && c.kind == cmdDaemon:
		case w == "--store" && i+1 < len(words):
			i++
			c.store = words[i]
		default:
			return command{}, fmt.Errorf("unexpected argument %q", w)
		}
	}
	if c.kind == cmdServe && !seen["--serve"] {
		return command{}, errors.New("nix-store without --serve")
	}
	if c.kind == cmdDaemon && !seen["--stdio"] {
		return command{}, errors.New("nix-daemon without --stdio")
	}
	return c, nil
}

// splitWords splits a command line as a POSIX shell would for plain words
// and single- or double-quoted strings (Nix shell-escapes --store values).
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case strings.IndexByte("|&;<>()$`*?[#~", c) >= 0:
			return nil, fmt.Errorf("shell syntax %q is not supported", c)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// execHandler routes SSH exec requests to the protocol servers.
type execHandler struct {
	serve     *serveproto.Server
	daemon    *daemonproto.Server
	accounts  *account.Service
	keys      *account.SigningKeys // nil: none shown
	sched     *scheduler.Scheduler
	queueList *queueSnapshot   // nil: sched.Queue, unshared
	records   *records.Service // nil: no builds command
	log       *slog.Logger
	// watchInterval is how often nixfarm queue --watch looks again
	// (0: scheduler.WatchEvery); tests shorten it.
	watchInterval time.Duration
}

var _ sshd.Handler = (*execHandler)(nil)

const supportedCommands = "nixfarm: this endpoint runs only what Nix sends for remote builds:\n" +
	"nixfarm:   nix-store --serve [--write]    (ssh:// builders and stores)\n" +
	"nixfarm:   nix-daemon --stdio             (ssh-ng:// builders and stores)\n" +
	"nixfarm:   nixfarm whoami [--json]        (your account, key, limits and usage)\n" +
	"nixfarm:   nixfarm workers [--json]       (the farm's workers: systems, features, slots)\n" +
	"nixfarm:   nixfarm builds [--json] [...]  (your account's builds; --help for the filters)\n" +
	"nixfarm:   nixfarm usage [--since T] [--json]  (your account's CPU hours, builds, bytes)\n" +
	"nixfarm:   nixfarm summary --since T --format github  (a CI step summary of your builds)\n" +
	"nixfarm:   nixfarm logs BUILD [--follow]  (a build's log; following, exits 0 if it succeeded)\n" +
	"nixfarm:   nixfarm queue [--json] [--watch]  (your queued and running builds: position, reason, start)\n" +
	"nixfarm:   nixfarm tokens create|list|revoke  (your account's API tokens; --help for more)\n" +
	"nixfarm:   nixfarm help                   (this list)\n"

// Exec implements sshd.Handler.
func (h *execHandler) Exec(ctx context.Context, s *sshd.Session) uint32 {
	c, err := parseCommand(s.Command)
	if err != nil {
		h.log.Info("command refused", "account", s.Account, "command", s.Command, "err", err)
		fmt.Fprintf(s.Stderr, "nixfarm: command %q refused: %v\n%s", s.Command, err, supportedCommands)
		return 127
	}
	ctx = build.WithKeyFingerprint(ctx, s.Fingerprint)
	switch c.kind {
	case cmdDaemon:
		err = h.daemon.Serve(ctx, s.Stdin, s.Stdout, &daemonproto.Session{Account: s.Account})
	case cmdServe:
		err = h.serve.Serve(ctx, s.Stdin, s.Stdout, &serveproto.Session{Account: s.Account, Write: c.write, Stderr: s.Stderr})
	case cmdWhoami:
		err = h.whoami(ctx, s, c.json)
	case cmdWorkers:
		err = h.workers(s, c.json)
	case cmdBuilds:
		err = h.builds(ctx, s, c.args)
	case cmdUsage:
		err = h.usage(ctx, s, c.args)
	case cmdSummary:
		err = h.summary(ctx, s, c.args)
	case cmdTokens:
		err = h.tokens(ctx, s, c.args)
	case cmdQueue:
		err = h.queue(ctx, s, c.args)
	case cmdHelp:
		_, help, _ := strings.Cut(supportedCommands, "\n")
		fmt.Fprint(s.Stdout, "nixfarm: this endpoint runs:\n"+help)
	case cmdLogs:
		var code uint32
		if code, err = h.logs(ctx, s, c.args); err == nil {
			return code
		}
	}
	if err != nil {
		// Only a public message reaches the client; anything else is
		// logged under an id the client is given.
		if publicerr.Is(err) && !errors.Is(err, context.Canceled) {
			h.log.Warn("session failed", "account", s.Account, "command", s.Command, "err", err)
		}
		msg := publicerr.Message(ctx, h.log, err, "session failed", "account", s.Account, "command", s.Command)
		fmt.Fprintf(s.Stderr, "error: nixfarm: %s\n", msg)
		return 1
	}
	return 0
}

// whoami writes the session's account, key, limits and usage.
func (h *execHandler) whoami(ctx context.Context, s *sshd.Session, asJSON bool) error {
	if h.accounts == nil {
		return errors.New("this farm keeps no accounts")
	}
	st, err := h.accounts.Status(ctx, s.Account, s.Fingerprint)
	if err != nil {
		h.log.Error("whoami", "account", s.Account, "err", err)
		return errors.New("the farm cannot read its accounts right now; tell the farm's operator")
	}
	if h.sched != nil {
		st.Usage.Running, st.Usage.Queued = h.sched.AccountBuilds(s.Account)
	}
	if h.keys != nil {
		st.SigningKey = h.keys.For(s.Account).Public().String()
	}
	if asJSON {
		enc := json.NewEncoder(s.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return st.WriteText(s.Stdout)
}

// workers writes the farm's workers as anyone may see them: systems,
// features, slots and states, but not whose builds they run.
func (h *execHandler) workers(s *sshd.Session, asJSON bool) error {
	if h.sched == nil {
		return errors.New("this farm has no scheduler")
	}
	list, queued := scheduler.Anonymous(h.sched.Workers()), h.sched.Queued()
	if asJSON {
		enc := json.NewEncoder(s.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"workers": list, "queued": queued})
	}
	scheduler.WriteWorkers(s.Stdout, list, queued, time.Now())
	return nil
}
