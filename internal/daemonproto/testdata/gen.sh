#!/usr/bin/env bash
# Records real worker-protocol sessions between a stock Nix client and a
# stock `nix-daemon --stdio`, for the golden transcript tests (Nix 2.8.0,
# protocol 1.34, made the committed ones). Nix runs ssh-ng://localhost
# commands through `bash -c` without ssh, so remote-program= points at a
# wrapper that tees both directions to files.
#
#   sessions/NN-name/{in,out}.gz   client→daemon, daemon→client
#
# Needs /bin/busybox (busybox-static).
#
# Usage: internal/daemonproto/testdata/gen.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp"; rm -rf "$tmp"' EXIT
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command'

rm -rf "$here/sessions"
mkdir -p "$here/sessions" "$tmp/rec" "$tmp/bb/bin"
cat >"$tmp/rec.sh" <<'REC'
#!/usr/bin/env bash
d=$(mktemp -d "$REC_DIR/s-XXXXXX")
tee "$d/in" | nix-daemon "$@" 2>"$d/err" | tee "$d/out"
REC
chmod +x "$tmp/rec.sh"
export REC_DIR=$tmp/rec

cp /bin/busybox "$tmp/bb/bin/busybox"
ln -s busybox "$tmp/bb/bin/sh"
client=$tmp/client
remote=$tmp/remote
bb=$(nix-store --store "$client" --add "$tmp/bb")
uri="ssh-ng://localhost?remote-program=$tmp/rec.sh&remote-store=$remote"

n=0
take() { # name: move the new recordings into sessions/NN-name[-K]
	local k=0 d dst
	n=$((n + 1))
	for d in $(ls -dtr "$REC_DIR"/s-*); do
		k=$((k + 1))
		dst=$here/sessions/$(printf '%02d' $n)-$1
		[ "$k" = 1 ] || dst=$dst-$k
		mkdir -p "$dst"
		for f in in out; do gzip -9n <"$d/$f" >"$dst/$f.gz"; done
		rm -rf "$d"
	done
}

cat >"$tmp/build.nix" <<NIX
let bb = builtins.storePath $bb;
    mk = name: script: derivation {
      inherit name; system = "x86_64-linux";
      builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin";
      args = [ "-c" script ];
    };
in {
  golden = mk "golden" "echo building golden; echo second line >&2; mkdir \$out; echo golden > \$out/file; echo \${bb} > \$out/ref";
  chain = let a = mk "chain-a" "echo a > \$out"; in mk "chain-b" "echo b \${a} > \$out";
}
NIX
out=$(nix-build --store "$client" --max-jobs 0 --builders "$uri x86_64-linux" "$tmp/build.nix" -A golden --no-out-link)
take build

extra=$(echo "some data" >"$tmp/data.txt" && nix-store --store "$client" --add "$tmp/data.txt")
nix copy --store "$client" --to "$uri" "$extra"
take copy-to

nix copy --no-check-sigs --store "$tmp/client2" --from "$uri" "$out"
take copy-from

nix path-info --store "$uri" "$out" >/dev/null
take path-info

nix build --store "$uri" --eval-store "$client" --no-link -f "$tmp/build.nix" chain
take remote-store-build

echo "bb=$bb out=$out extra=$extra" >"$here/sessions/paths.txt"
