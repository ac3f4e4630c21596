package substituter

import (
	"strings"
	"testing"
)

func TestParseCacheInfo(t *testing.T) {
	tests := []struct {
		in      string
		prio    int
		mass    bool
		wantErr string
	}{
		{"StoreDir: /nix/store", 50, false, ""}, // as Nix writes it: no final newline
		{"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n", 40, true, ""},
		{"  Priority :  7 \r\nnonsense line\nUnknown: x\n", 7, false, ""},
		{"", 50, false, ""},
		{"StoreDir: /gnu/store\n", 0, false, `StoreDir is "/gnu/store"`},
		{"StoreDir: /nix/store/\n", 0, false, "StoreDir"},
		{"Priority: high\n", 0, false, "Priority"},
		{"Priority: -1\n", 0, false, "Priority"},
		{"Priority: 99999999999999999999\n", 0, false, "Priority"},
		{"StoreDir: /nix/store\x00\n", 0, false, "NUL"},
		{strings.Repeat("x", maxCacheInfo+1), 0, false, "larger than"},
	}
	for _, tt := range tests {
		info, err := parseCacheInfo([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseCacheInfo(%.40q) = %v, want an error with %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseCacheInfo(%.40q): %v", tt.in, err)
			continue
		}
		if info.Priority != tt.prio || info.WantMassQuery != tt.mass {
			t.Errorf("parseCacheInfo(%.40q) = %+v", tt.in, info)
		}
	}
}

// FuzzParseCacheInfo checks that any input either fails or gives an info
// that renders and parses back the same.
func FuzzParseCacheInfo(f *testing.F) {
	for _, s := range []string{
		"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
		"StoreDir: /nix/store",
		"Priority: 10\nPriority: 20\n",
		"StoreDir: /gnu/store\n",
		":\n::\nPriority:\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := parseCacheInfo(data)
		if err != nil {
			return
		}
		if info.StoreDir != "/nix/store" || info.Priority < 0 || info.Priority > 10000 {
			t.Fatalf("accepted %+v", info)
		}
		again, err := parseCacheInfo([]byte(info.String()))
		if err != nil || *again != *info {
			t.Fatalf("round trip: %+v -> %q -> %+v, %v", info, info.String(), again, err)
		}
	})
}
