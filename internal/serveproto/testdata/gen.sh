#!/usr/bin/env bash
# Records real serve-protocol sessions between a stock Nix client and a
# stock `nix-store --serve --write`, for the golden transcript tests
# (Nix 2.8.0 made the committed ones). Nix runs ssh://localhost commands
# through `bash -c` without ssh, so remote-program= points at a wrapper
# that tees both directions to files.
#
#   sessions/NN-name/{in,out,err}.gz   client→server, server→client, stderr
#
# Needs /bin/busybox (busybox-static); its store path is part of the
# fixtures, and the test rebuilds it from the machine's /bin/busybox.
#
# Usage: internal/serveproto/testdata/gen.sh
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
tee "$d/in" | nix-store "$@" 2>"$d/err" | tee "$d/out"
REC
chmod +x "$tmp/rec.sh"
export REC_DIR=$tmp/rec

cp /bin/busybox "$tmp/bb/bin/busybox"
ln -s busybox "$tmp/bb/bin/sh"
client=$tmp/client
remote=$tmp/remote
bb=$(nix-store --store "$client" --add "$tmp/bb")
uri="ssh://localhost?remote-program=$tmp/rec.sh&remote-store=$remote"

n=0
take() { # name: move the one new recording into sessions/NN-name
	n=$((n + 1))
	local d
	d=$(ls -d "$REC_DIR"/s-*)
	local dst
	dst=$here/sessions/$(printf '%02d' $n)-$1
	mkdir -p "$dst"
	for f in in out err; do gzip -9n <"$d/$f" >"$dst/$f.gz"; done
	rm -rf "$d"
}

cat >"$tmp/build.nix" <<NIX
let bb = builtins.storePath $bb; in
derivation {
  name = "golden"; system = "x86_64-linux";
  builder = "\${bb}/bin/sh"; PATH = "\${bb}/bin";
  args = [ "-c" "echo building golden >&2; mkdir \$out; echo golden > \$out/file; ln -s file \$out/link; echo \${bb} > \$out/ref" ];
}
NIX
out=$(nix-build --store "$client" --max-jobs 0 --builders "$uri x86_64-linux" "$tmp/build.nix" --no-out-link)
take build

extra=$(echo "some data" > "$tmp/data.txt" && nix-store --store "$client" --add "$tmp/data.txt")
nix copy --store "$client" --to "$uri" "$extra"
take copy-to

nix copy --no-check-sigs --store "$tmp/client2" --from "$uri" "$out"
take copy-from

nix path-info --store "$uri" -r "$out" >/dev/null
take path-info-recursive

echo "bb=$bb out=$out extra=$extra" >"$here/sessions/paths.txt"
