#!/usr/bin/env bash
# Records real serve-protocol sessions between a stock Nix client and a
# stock `nix-store --serve --write` of the same version, for the golden
# transcript tests. The whole recording runs inside the client's chroot
# (see scripts/nix-clients.sh and scripts/nix-client.sh):
#
#   bookworm  Nix 2.8   sessions/nix-2.8/
#   trixie    Nix 2.26  sessions/nix-2.26/
#   sid       Nix 2.34  sessions/nix-2.34/
#
# All three speak serve protocol 2.7. The server's store is the chroot's
# own /nix/store (a chroot has no user namespaces, so only its default
# store can build, without a sandbox); the clients use chroot stores and
# build nothing themselves. Nix runs ssh://localhost commands through
# `bash -c` without ssh, so remote-program= points at a wrapper that tees
# both directions to files.
#
#   sessions/nix-X.Y/NN-name/{in,out,err}.gz   client→server, server→client, stderr
#   sessions/nix-X.Y/paths.txt                 the store paths involved
#
# Busybox (the builder) comes from the host's /bin/busybox. Every store
# holds it before the first session, so that no session carries its
# megabyte: paths.txt says `seeded=bb`, and the test puts the same path,
# rebuilt from the machine's /bin/busybox, into nixfarm's store first.
# The committed nix-2.8 sessions predate this script: they were recorded
# with the host's Nix 2.8, with chroot stores at both ends and busybox
# copied in session 01, which the test replays too. `gen.sh bookworm`
# replaces them with seeded ones.
#
# Needs root, /bin/busybox (busybox-static) and the chroots.
#
# Usage: internal/serveproto/testdata/gen.sh [bookworm|trixie|sid]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${1:-bookworm}

if [ -z "${GEN_TMP:-}" ]; then
	case $suite in
	bookworm | trixie | sid) ;;
	*) echo "usage: gen.sh [bookworm|trixie|sid]" >&2; exit 2 ;;
	esac
	[ -x /bin/busybox ] || { echo "gen.sh: /bin/busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
	repo=$(cd "$here/../../.." && pwd)
	tmp=$(mktemp -d)
	trap 'chmod -R u+w "$tmp"; rm -rf "$tmp"' EXIT
	mkdir -p "$tmp/bb/bin"
	cp /bin/busybox "$tmp/bb/bin/busybox"
	ln -s busybox "$tmp/bb/bin/sh"
	"$repo/scripts/nix-client.sh" --bind "$here" "$suite" env GEN_TMP="$tmp" "$here/gen.sh" "$suite"
	exit
fi

# Inside the chroot from here on; $GEN_TMP is the host's, at the same path.
tmp=$GEN_TMP
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command'
version=$(nix --version | sed -E 's/.* ([0-9]+\.[0-9]+)\..*/\1/')
sessions=$here/sessions/nix-$version
echo "gen.sh: recording Nix $version sessions into $sessions"

rm -rf "$sessions"
mkdir -p "$sessions" "$tmp/rec"
cat >"$tmp/rec.sh" <<'REC'
#!/usr/bin/env bash
# Nix 2.8 starts ssh://localhost commands from the root of its mount
# namespace (restoreMountNamespace, fixed in later versions), which is
# outside the chroot: go back in.
[ / -ef "$REC_ROOT" ] || exec chroot "$REC_ROOT" "$0" "$@"
d=$(mktemp -d "$REC_DIR/s-XXXXXX")
tee "$d/in" | nix-store "$@" 2>"$d/err" | tee "$d/out"
REC
chmod +x "$tmp/rec.sh"
export REC_DIR=$tmp/rec REC_ROOT=/proc/$$/root

client=$tmp/client
bb=$(nix-store --add "$tmp/bb")
for store in "$client" "$tmp/client2"; do
	[ "$(nix-store --store "$store" --add "$tmp/bb")" = "$bb" ]
done
uri="ssh://localhost?remote-program=$tmp/rec.sh"

n=0
take() { # name: move the one new recording into sessions/NN-name
	n=$((n + 1))
	local d dst
	d=$(ls -d "$REC_DIR"/s-*)
	dst=$sessions/$(printf '%02d' $n)-$1
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

extra=$(echo "some data" >"$tmp/data.txt" && nix-store --store "$client" --add "$tmp/data.txt")
nix copy --store "$client" --to "$uri" "$extra"
take copy-to

nix copy --no-check-sigs --store "$tmp/client2" --from "$uri" "$out"
take copy-from

nix path-info --store "$uri" -r "$out" >/dev/null
take path-info-recursive

echo "bb=$bb out=$out extra=$extra seeded=bb" >"$sessions/paths.txt"
