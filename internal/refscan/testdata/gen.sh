#!/usr/bin/env bash
# Regenerates the reference-scanning known answer with the real Nix.
# Fixtures checked in were made by Nix 2.8.0 (nix (Nix) 2.8.0).
#
# A derivation is built in a throw-away chroot store, with busybox (added
# from /bin/busybox) as its only tool. Its output holds references to some
# of its inputs in awkward places and near misses of others:
#
#   out.nar         `nix-store --dump` of the output
#   candidates.txt  every path Nix may find in it: the inputs and the
#                   output itself (for self-references)
#   references.txt  `nix-store -q --references` of the output: what Nix found
#
# Run from anywhere: bash internal/refscan/testdata/gen.sh
set -euo pipefail
cd "$(dirname "$0")"
echo "using $(nix --version)" >&2

work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
S=$work/store
opts=(--store "$S" --option substituters '')

mkdir -p "$work/bbdir/bin"
cp /bin/busybox "$work/bbdir/bin/busybox"
ln -s busybox "$work/bbdir/bin/sh"
bb=$(nix-store "${opts[@]}" --add "$work/bbdir")

cat >"$work/refs.nix" <<'NIX'
{ bbPath }:
let
  bb = builtins.storePath bbPath;
  r = n: builtins.toFile "r${toString n}" "input ${toString n}";
in derivation {
  name = "refs";
  system = builtins.currentSystem;
  builder = "${bb}/bin/sh";
  PATH = "${bb}/bin";
  r1 = r 1; r2 = r 2; r3 = r 3; r4 = r 4; r5 = r 5; r6 = r 6; r7 = r 7;
  args = [ "-c" ''
    set -e
    h() { b=''${1##*/}; echo -n ''${b%%-*}; }
    mkdir $out
    # r1: preceded by three nix32 characters, so a scanner that only
    # looks at windows starting after a non-nix32 byte misses it.
    echo -n "xyz$(h $r1)abc" > $out/a
    # r2: the very last bytes of a file.
    echo -n "tail:$(h $r2)" > $out/end
    # r3: at an odd offset, across a 32-byte alignment of the NAR.
    echo -n "0123456789abcdf$(h $r3)g" > $out/split
    # r4: only inside a symlink target.
    ln -s $r4/dangling $out/link
    # r5: near misses only: broken by a dash, cut short, upper-cased,
    # and 31 of its 32 characters followed by a byte outside the alphabet.
    x=$(h $r5)
    echo "''${x:0:16}-''${x:16}" > $out/miss
    echo "''${x:1}" >> $out/miss
    echo "$x" | tr a-z A-Z >> $out/miss
    echo -n "''${x:0:31}e" >> $out/miss
    # r6: only as a file name.
    echo -n data > "$out/$(h $r6)"
    # r7: nowhere. The output refers to itself.
    echo -n "$out" > $out/self
  '' ];
}
NIX
drv=$(nix-instantiate "${opts[@]}" --argstr bbPath "$bb" "$work/refs.nix" 2>/dev/null)
out=$(nix-store "${opts[@]}" --realise "$drv")
# --dump reads the file system, so name the path inside the chroot.
nix-store --dump "$S$out" >out.nar
nix-store "${opts[@]}" -q --references "$out" | sort >references.txt
{ nix-store "${opts[@]}" -q --references "$drv"; echo "$out"; } | sort >candidates.txt
