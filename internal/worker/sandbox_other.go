//go:build !linux

package worker

import "errors"

// tryNamespaces: nixfarm checks Nix's sandbox only on Linux.
func tryNamespaces(bool) error {
	return errors.New("nixfarm can check that Nix sandboxes builds only on Linux")
}
