package nar_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nar"
)

// fixtures are the trees made by testdata/mktree.sh and dumped by real Nix
// into testdata/<name>.nar by testdata/gen.sh.
var fixtures = []string{"tree", "file", "exe", "empty-file", "link", "empty-dir"}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".nar"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// makeTrees recreates the fixture trees in a new temporary directory and
// returns it.
func makeTrees(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	script, err := filepath.Abs(filepath.Join("testdata", "mktree.sh"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", script, dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh %s: %v\n%s", script, err, out)
	}
	return dir
}

type fixtureHashes struct{ flatHex, narNix32 string }

func readHashes(t testing.TB) map[string]fixtureHashes {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "hashes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]fixtureHashes{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 3 {
			t.Fatalf("hashes.txt: bad line %q", line)
		}
		m[fs[0]] = fixtureHashes{fs[1], fs[2]}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// requireNix returns the path of the named Nix tool. Without it the test is
// skipped loudly, except in CI (CI set), where Nix must be installed.
func requireNix(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found, but CI must install Nix: %v", tool, err)
		}
		t.Skipf("SKIPPING CHECK AGAINST REAL NIX: %s not found in PATH (%v)", tool, err)
	}
	return p
}

// Building NARs by hand for the hostile tests.

type raw []byte // bytes put in a NAR as they are

// build encodes parts: a string is a token, a uint64 a bare length, raw is
// copied as it is, and a []any is built recursively.
func build(parts ...any) []byte {
	var b []byte
	var add func(p any)
	add = func(p any) {
		switch v := p.(type) {
		case string:
			b = binary.LittleEndian.AppendUint64(b, uint64(len(v)))
			b = append(b, v...)
			b = append(b, make([]byte, (8-len(v)%8)%8)...)
		case uint64:
			b = binary.LittleEndian.AppendUint64(b, v)
		case raw:
			b = append(b, v...)
		case []any:
			for _, x := range v {
				add(x)
			}
		default:
			panic(fmt.Sprintf("build: %T", p))
		}
	}
	for _, p := range parts {
		add(p)
	}
	return b
}

func narOf(node []any) []byte { return build("nix-archive-1", node) }

func reg(contents string) []any { return []any{"(", "type", "regular", "contents", contents, ")"} }

func exe(contents string) []any {
	return []any{"(", "type", "regular", "executable", "", "contents", contents, ")"}
}

func sym(target string) []any { return []any{"(", "type", "symlink", "target", target, ")"} }

func dir(entries ...[]any) []any {
	parts := []any{"(", "type", "directory"}
	for _, e := range entries {
		parts = append(parts, e)
	}
	return append(parts, ")")
}

func ent(name string, node []any) []any {
	return []any{"entry", "(", "name", name, "node", node, ")"}
}

// nested returns n directories, each the only entry "d" of its parent.
func nested(n int, leaf []any) []any {
	node := leaf
	for i := 0; i < n; i++ {
		node = dir(ent("d", node))
	}
	return node
}

// node is one node read back from a NAR.
type node struct {
	nar.Header
	Contents string
}

// readAll reads every node of a NAR from src with the Reader.
func readAll(src io.Reader) ([]node, error) {
	r := nar.NewReader(src)
	var nodes []node
	for {
		h, err := r.Next()
		if err == io.EOF {
			return nodes, nil
		}
		if err != nil {
			return nodes, err
		}
		n := node{Header: *h}
		if h.Type == nar.TypeRegular {
			var b bytes.Buffer
			if _, err := io.Copy(&b, r); err != nil {
				return nodes, err
			}
			if int64(b.Len()) != h.Size {
				return nodes, fmt.Errorf("read %d bytes of %q, header says %d", b.Len(), h.Path, h.Size)
			}
			n.Contents = b.String()
		}
		nodes = append(nodes, n)
	}
}

// writeAll writes nodes with the Writer.
func writeAll(nodes []node) ([]byte, error) {
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	for _, n := range nodes {
		h := n.Header
		if err := w.WriteHeader(&h); err != nil {
			return nil, err
		}
		if h.Type == nar.TypeRegular {
			if _, err := io.WriteString(w, n.Contents); err != nil {
				return nil, err
			}
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// countingReader counts the bytes its reader returned.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// exactReader serves a NAR and fails the test if it is ever asked for more
// bytes than the NAR still has: the Reader must not even try to read past
// the end.
type exactReader struct {
	t    testing.TB
	data []byte
}

func (e *exactReader) Read(p []byte) (int, error) {
	if len(p) > len(e.data) {
		e.t.Errorf("read of %d bytes with only %d bytes of the NAR left", len(p), len(e.data))
		return 0, errors.New("read past the end of the nar")
	}
	n := copy(p, e.data)
	e.data = e.data[n:]
	return n, nil
}
