#!/usr/bin/env bash
# Regenerates the signing known answers with the real Nix.
# Fixtures checked in were made by Nix 2.8.0 (nix (Nix) 2.8.0).
#
#   <name>.sec, <name>.pub  keys from `nix-store --generate-binary-cache-key`
#                           (test keys, never trusted anywhere)
#   path-info.json          `nix path-info --json --sigs` of two paths in a
#                           throw-away chroot store, one without references
#                           and one with two, each signed with both keys by
#                           `nix store sign --key-file`
#
# Run from anywhere: bash internal/signature/testdata/gen.sh
set -euo pipefail
cd "$(dirname "$0")"
echo "using $(nix --version)" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
S=$work/store
opts=(--store "$S" --option substituters '')
nix() { command nix --extra-experimental-features nix-command "${opts[@]}" "$@"; }

nix-store --generate-binary-cache-key cache.example.org-1 cache.example.org-1.sec cache.example.org-1.pub
nix-store --generate-binary-cache-key other-key other-key.sec other-key.pub

printf 'signed data\n' >"$work/data"
plain=$(nix-store "${opts[@]}" --add "$work/data")
refs=$(nix-instantiate "${opts[@]}" --eval --read-write-mode -E \
	"let a = builtins.toFile \"a\" \"x\"; in builtins.toFile \"with-refs\" \"\${a} \${builtins.storePath $plain}\"" | tr -d '"')
for k in cache.example.org-1 other-key; do
	nix store sign --key-file "$k.sec" "$plain" "$refs"
done
nix path-info --json --sigs "$plain" "$refs" >path-info.json
