package server

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nixfarm/nixfarm/internal/signature"
)

// signingKeyName names the farm's key in its signatures ("nixfarm-1:…").
// The name is only a label: clients trust the public key they are given.
const signingKeyName = "nixfarm-1"

// loadOrCreateSigningKey reads the farm's secret signing key (the format
// of `nix-store --generate-binary-cache-key`), creating it on first start.
func loadOrCreateSigningKey(path string) (signature.SecretKey, bool, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := signature.ParseSecretKey(strings.TrimSpace(string(data)))
		if err != nil {
			return signature.SecretKey{}, false, fmt.Errorf("reading the signing key %s: %w", path, err)
		}
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return signature.SecretKey{}, false, fmt.Errorf("reading the signing key: %w", err)
	}
	k, _, err := signature.Generate(signingKeyName)
	if err != nil {
		return signature.SecretKey{}, false, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(k.String()+"\n"), 0o600); err != nil {
		return signature.SecretKey{}, false, fmt.Errorf("writing the signing key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return signature.SecretKey{}, false, fmt.Errorf("writing the signing key: %w", err)
	}
	return k, true, nil
}
