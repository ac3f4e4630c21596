package binarycache

import (
	"sync"
)

// Rendered narinfos. A client's machines, or a team's, ask for the same
// narinfos again and again; with the store's generation (which changes
// whenever any view or object does) a rendered narinfo is answered again
// without SQL for as long as nothing in the store changed. Entries are
// per account, since each account has its own view.

// maxNarInfos bounds the rendered narinfos kept; past it they are all
// dropped (they are cheap to render again).
const maxNarInfos = 50_000

type narInfoKey struct{ account, hashPart string }

type narInfoEntry struct {
	body string
	gen  uint64
}

type narInfos struct {
	mu sync.Mutex
	m  map[narInfoKey]narInfoEntry
}

// get returns the narinfo rendered for key at generation gen, if any.
func (n *narInfos) get(key narInfoKey, gen uint64) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.m[key]
	if !ok || e.gen != gen {
		return "", false
	}
	return e.body, true
}

// put keeps a narinfo rendered from what the store held at generation
// gen (taken before the store was read).
func (n *narInfos) put(key narInfoKey, gen uint64, body string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil || len(n.m) >= maxNarInfos {
		n.m = make(map[narInfoKey]narInfoEntry)
	}
	n.m[key] = narInfoEntry{body, gen}
}
