#!/bin/sh
# gen.sh regenerates the known-answer fixtures of package nar with real Nix:
# for each tree made by mktree.sh, <name>.nar is `nix-store --dump` of it
# and hashes.txt records `nix-hash --type sha256 --flat <name>.nar` (hex)
# and `nix-hash --type sha256 --base32 <tree>` (the NAR hash in nix32).
# The fixtures in git were made with Nix 2.8.0; run from anywhere.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sh ./mktree.sh "$tmp"
{
	echo "# name sha256-of-nar-hex nar-hash-nix32, made by gen.sh with $(nix-store --version)"
	for name in tree file exe empty-file link empty-dir; do
		nix-store --dump "$tmp/$name" >"$name.nar"
		echo "$name $(nix-hash --type sha256 --flat "$name.nar") $(nix-hash --type sha256 --base32 "$tmp/$name")"
	done
} >hashes.txt
