#!/usr/bin/env bash
# Regenerates real .narinfo files with the real Nix.
# Fixtures checked in were made by Nix 2.8.0 (nix (Nix) 2.8.0).
#
# Three paths are put in a throw-away chroot store: a file added with
# `nix-store --add` (CA fixed:r:sha256, no references), a builtins.toFile
# text with references (CA text:sha256), and the output of a derivation
# built with busybox (from /bin/busybox), which has a deriver, references
# and a self-reference. Their closure is copied with `nix copy --to` into
#
#   none/   file://...?compression=none, unsigned
#   xz/     file://...?compression=xz&secret-key=test-cache-1.sec
#
# keeping only the .narinfo files (NARs are left out to keep this small).
# The built path in xz/ is then also signed in the cache by
# `nix store sign --store file://... --key-file another-cache-1.sec`, so it
# has two Sig lines. test-cache-1.pub and another-cache-1.pub verify them.
#
# Run from anywhere: bash internal/narinfo/testdata/gen.sh
set -euo pipefail
cd "$(dirname "$0")"
echo "using $(nix --version)" >&2

work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
S=$work/store
opts=(--store "$S" --option substituters '')
nix() { command nix --extra-experimental-features nix-command "${opts[@]}" "$@"; }

nix-store --generate-binary-cache-key test-cache-1 "$work/key.sec" test-cache-1.pub
nix-store --generate-binary-cache-key another-cache-1 "$work/key2.sec" another-cache-1.pub

printf 'some data\n' >"$work/data"
data=$(nix-store "${opts[@]}" --add "$work/data")
text=$(nix-instantiate "${opts[@]}" --eval --read-write-mode -E \
	"builtins.toFile \"with-refs\" \"\${builtins.storePath $data}\"" | tr -d '"')

mkdir -p "$work/bbdir/bin"
cp /bin/busybox "$work/bbdir/bin/busybox"
ln -s busybox "$work/bbdir/bin/sh"
bb=$(nix-store "${opts[@]}" --add "$work/bbdir")
cat >"$work/out.nix" <<'NIX'
{ bbPath, textPath }:
let bb = builtins.storePath bbPath; in
derivation {
  name = "built";
  system = builtins.currentSystem;
  builder = "${bb}/bin/sh";
  PATH = "${bb}/bin";
  text = builtins.storePath textPath;
  args = [ "-c" "mkdir $out; echo $text > $out/ref; echo $out > $out/self" ];
}
NIX
drv=$(nix-instantiate "${opts[@]}" --argstr bbPath "$bb" --argstr textPath "$text" "$work/out.nix" 2>/dev/null)
built=$(nix-store "${opts[@]}" --realise "$drv" 2>/dev/null)

copy() { # copy <dir> <uri query>
	rm -rf "$1"
	nix copy --to "file://$work/$1?$2" "$data" "$text" "$built"
	if [ "$1" = xz ]; then
		command nix --extra-experimental-features nix-command store sign \
			--store "file://$work/$1" --key-file "$work/key2.sec" "$built"
	fi
	mkdir "$1"
	cp "$work/$1"/*.narinfo "$1/"
	chmod 644 "$1"/*.narinfo
}
copy none "compression=none"
copy xz "compression=xz&secret-key=$work/key.sec"
