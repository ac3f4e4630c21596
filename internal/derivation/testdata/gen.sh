#!/usr/bin/env bash
# Regenerates the known-answer fixtures of package derivation with the real
# Nix (Nix 2.8.0 made the committed ones). Everything happens in throwaway
# chroot stores under a temporary directory; /nix is never touched and no
# substituter is asked.
#
#   drvs.txt                  attribute, .drv path of every top-level derivation
#   drv/<hash>-<name>.drv     every .drv in the closure of drvs.nix and capture.nix
#   json/<hash>-<name>.json   `nix show-derivation` of each .drv
#   serve/<hash>-<name>.drv.basic  BasicDerivation bytes a Nix client sent with
#                             BuildDerivation (serve protocol, command 8)
#   worker/<hash>-<name>.drv.basic the same over ssh-ng (worker protocol, op 36)
#
# The captures build capture.nix with `--max-jobs 0` and a builder
# ssh://localhost (ssh-ng://localhost), which Nix runs without ssh through
# `bash -c`; a wrapper records what the client sends to
# `nix-store --serve --write` (`nix-daemon --stdio`). They need a static
# busybox at /bin/busybox, whose store path ends up in the captured
# derivations.
#
# Usage: internal/derivation/testdata/gen.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp"; rm -rf "$tmp"' EXIT
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command ca-derivations impure-derivations'

kat=$tmp/kat
cd "$here"
rm -rf drv json serve worker drvs.txt
mkdir drv json serve worker

copy_drvs() { # store, drv paths...
	local store=$1
	shift
	for p in $(nix-store --store "$store" -qR "$@" | grep '\.drv$'); do
		base=${p#/nix/store/}
		cp "$store$p" "drv/$base"
		chmod 644 "drv/$base"
		nix show-derivation --store "$store" "$p" >"json/${base%.drv}.json"
	done
}

# Known answers: instantiate every attribute of drvs.nix.
roots=()
for attr in $(nix-instantiate --eval --json -E 'builtins.attrNames (import ./drvs.nix)' | tr -d '[]"' | tr , ' '); do
	p=$(nix-instantiate --store "$kat" drvs.nix -A "$attr" 2>/dev/null)
	echo "$attr $p" >>drvs.txt
	roots+=("$p")
done
copy_drvs "$kat" "${roots[@]}"

# Captures: build capture.nix on a recorded remote builder.
mkdir -p "$tmp/bb/bin"
cp /bin/busybox "$tmp/bb/bin/busybox"
ln -s busybox "$tmp/bb/bin/sh"
for proto in serve worker; do
	client=$tmp/$proto-client
	rec=$tmp/$proto-rec
	mkdir -p "$rec"
	if [ $proto = serve ]; then
		uri=ssh://localhost
		prog="nix-store"
	else
		uri=ssh-ng://localhost
		prog="nix-daemon"
	fi
	cat >"$tmp/$proto-rec.sh" <<-EOF
		#!/usr/bin/env bash
		d=\$(mktemp -d "$rec/XXXXXX")
		tee "\$d/in" | $prog "\$@" 2>"\$d/err" | tee "\$d/out"
	EOF
	chmod +x "$tmp/$proto-rec.sh"
	bb=$(nix-store --store "$client" --add "$tmp/bb")
	nix-build --store "$client" --max-jobs 0 --no-out-link --arg bb "$bb" capture.nix \
		--builders "$uri?remote-program=$tmp/$proto-rec.sh&remote-store=$tmp/$proto-worker x86_64-linux" \
		>/dev/null 2>"$tmp/$proto-build.log" || { cat "$tmp/$proto-build.log"; exit 1; }
	(cd extract && go run . $proto "$here/$proto" "$rec"/*/in)
	if [ $proto = serve ]; then
		caproots=()
		for attr in $(nix-instantiate --eval --json -E 'builtins.attrNames (import ./capture.nix { bb = ""; })' | tr -d '[]"' | tr , ' '); do
			p=$(nix-instantiate --store "$client" capture.nix --arg bb "$bb" -A "$attr" 2>/dev/null)
			echo "capture.$attr $p" >>drvs.txt
			caproots+=("$p")
		done
		copy_drvs "$client" "${caproots[@]}"
	fi
done
echo "fixtures written to $here"
