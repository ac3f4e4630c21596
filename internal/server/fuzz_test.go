package server

import (
	"reflect"
	"strings"
	"testing"
)

// shellQuote quotes a word as a POSIX shell reads it back: single quotes,
// with each ' written as '\”.
func shellQuote(w string) string {
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

// FuzzCommand checks the exec-request parser, which reads whatever an
// authenticated client sends: splitWords never panics, its words are never
// longer in total than the line, and quoting them again reads back the same
// words; parseCommand accepts only nix-store --serve and nix-daemon --stdio,
// and a command it accepts, written out again, parses to the same command.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"nix-store --serve",
		"nix-store --serve --write",
		"nix-daemon --stdio",
		"/run/current-system/sw/bin/nix-store --serve --write",
		"nix-store --serve --write --store 'daemon'",
		`nix-daemon --stdio --store "ssh://x?remote-store=local"`,
		`nix-store --serve --store 'a'\''b'`,
		`nix-store --serve --store a\ b`,
		"nix-store --serve --serve",
		"nix-daemon --stdio --write",
		"bash -c 'rm -rf /'",
		"nix-store --serve; id",
		"nix-store '--serve",
		`nix-daemon "--stdio`,
		"",
		"\t\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		words, err := splitWords(line)
		if err == nil {
			total := 0
			quoted := make([]string, len(words))
			for i, w := range words {
				total += len(w)
				quoted[i] = shellQuote(w)
			}
			if total > len(line) || len(words) > len(line) {
				t.Fatalf("%d words of %d bytes from a line of %d bytes", len(words), total, len(line))
			}
			again, err := splitWords(strings.Join(quoted, " "))
			if err != nil {
				t.Fatalf("quoted words %q do not split: %v", quoted, err)
			}
			if len(again) != 0 || len(words) != 0 {
				if !reflect.DeepEqual(again, words) {
					t.Fatalf("words %q quoted read back as %q", words, again)
				}
			}
		}

		c, err := parseCommand(line)
		if err != nil {
			return
		}
		canon := []string{}
		switch c.kind {
		case cmdServe:
			canon = append(canon, "nix-store", "--serve")
			if c.write {
				canon = append(canon, "--write")
			}
		case cmdDaemon:
			if c.write {
				t.Fatalf("%q: nix-daemon with write", line)
			}
			canon = append(canon, "nix-daemon", "--stdio")
		case cmdWhoami, cmdWorkers, cmdBuilds:
			return // nixfarm's own commands, matched word for word
		default:
			t.Fatalf("%q: accepted with kind %d", line, c.kind)
		}
		first := words[0]
		if i := strings.LastIndexByte(first, '/'); i >= 0 {
			first = first[i+1:]
		}
		if first != "nix-store" && first != "nix-daemon" {
			t.Fatalf("%q accepted for program %q", line, words[0])
		}
		if c.store != "" {
			canon = append(canon, "--store", shellQuote(c.store))
		}
		c2, err := parseCommand(strings.Join(canon, " "))
		if err != nil {
			t.Fatalf("%q accepted as %+v, but its canonical form %q is refused: %v", line, c, canon, err)
		}
		if !reflect.DeepEqual(c2, c) {
			t.Fatalf("%q parsed as %+v, its canonical form %q as %+v", line, c, canon, c2)
		}
	})
}
