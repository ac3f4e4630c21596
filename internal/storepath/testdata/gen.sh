#!/usr/bin/env bash
# Regenerates the known store paths in this directory with the real Nix.
# Fixtures checked in were made by Nix 2.8.0 (nix (Nix) 2.8.0).
#
# Everything is added to a throw-away chroot store, so /nix is untouched.
#
#   fixed.txt   "<path> <ca>" per line: paths made by `nix-store --add` (a
#               file and a directory: source paths, r:sha256) and
#               `nix-store --add-fixed [--recursive] <algo>`, with the content
#               address Nix recorded; the hash in <ca> is cross-checked
#               against `nix-hash`
#   text.txt    "<path> <contents file> <ref>..." per line: builtins.toFile
#               results (nix-instantiate --eval) and a .drv, with the
#               references `nix-store -q --references` reports
#   text/       the exact contents of those files, copied out of the store
#
# Run from anywhere: bash internal/storepath/testdata/gen.sh
set -euo pipefail
cd "$(dirname "$0")"
echo "using $(nix --version)" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
S=$work/store
opts=(--store "$S" --option substituters '')
nix() { command nix --extra-experimental-features nix-command "${opts[@]}" "$@"; }

# Inputs.
printf 'hello, store\n' >"$work/hello.txt"
mkdir -p "$work/tree/sub"
printf 'a\n' >"$work/tree/a.txt"
printf '#!/bin/sh\necho b\n' >"$work/tree/sub/b.sh"
chmod +x "$work/tree/sub/b.sh"
ln -s a.txt "$work/tree/link"

: >fixed.txt
add() { # add <expected nix-hash args> <nix-store args>...
	local hashargs=$1
	shift
	local p ca h
	p=$(nix-store "${opts[@]}" "$@")
	ca=$(nix path-info --json "$p" | sed -n 's/.*"ca":"\([^"]*\)".*/\1/p')
	h=$(nix-hash $hashargs --base32 "${@: -1}")
	case $ca in *":$h") ;; *) echo "ca $ca does not end in nix-hash's $h" >&2; exit 1 ;; esac
	echo "$p $ca" >>fixed.txt
}
add "--type sha256" --add "$work/hello.txt"
add "--type sha256" --add "$work/tree"
add "--type sha256 --flat" --add-fixed sha256 "$work/hello.txt"
add "--type sha1 --flat" --add-fixed sha1 "$work/hello.txt"
add "--type md5 --flat" --add-fixed md5 "$work/hello.txt"
add "--type sha512 --flat" --add-fixed sha512 "$work/hello.txt"
add "--type sha1" --add-fixed --recursive sha1 "$work/tree"
add "--type sha512" --add-fixed --recursive sha512 "$work/hello.txt"
add "--type sha256" --add-fixed --recursive sha256 "$work/hello.txt"

rm -rf text
mkdir text
: >text.txt
i=0
record() { # record <store path>
	local p=$1 refs
	i=$((i + 1))
	cp "$S$p" "text/$i"
	chmod 644 "text/$i"
	refs=$(nix-store "${opts[@]}" -q --references "$p" | sort | tr '\n' ' ')
	echo "$p $i ${refs% }" | sed 's/ *$//' >>text.txt
}
eval_path() {
	nix-instantiate "${opts[@]}" --eval --read-write-mode -E "$1" | tr -d '"'; }

hello=$(sed -n 1p fixed.txt | cut -d' ' -f1)
tree=$(sed -n 2p fixed.txt | cut -d' ' -f1)
record "$(eval_path 'builtins.toFile "empty" ""')"
record "$(eval_path 'builtins.toFile "greeting.txt" "hello\nworld\n"')"
record "$(eval_path 'builtins.toFile ".dotted+name=?_-" "x"')"
record "$(eval_path "builtins.toFile \"one-ref\" \"see \${builtins.storePath $hello}\"")"
record "$(eval_path "let a = builtins.toFile \"a\" \"x\"; in builtins.toFile \"two-refs\" \"\${builtins.storePath $tree} and \${a} and \${builtins.storePath $hello}\"")"
drv=$(nix-instantiate "${opts[@]}" -E "derivation { name = \"d\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo > \$out\" ]; src = builtins.storePath $hello; }")
record "$drv"
