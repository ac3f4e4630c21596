#!/usr/bin/env bash
# Provides the stock Nix clients the end-to-end tests drive, one Debian
# chroot each, made with debootstrap from the Debian archive this machine's
# apt already uses:
#
#   bookworm  Nix 2.8   (worker protocol 1.34, serve 2.7)
#   trixie    Nix 2.26  (1.38, with protocol features)
#   sid       Nix 2.34  (1.38, with protocol features)
#
# The chroots live in a cache directory that survives between runs
# (NIXFARM_CLIENTS_DIR, default /var/cache/nixfarm/nix-clients). A run that
# finds them complete checks each with `nix --version` and spends seconds.
# A chroot is built under <suite>.partial and renamed into place only when
# it is complete, so an interrupted run leaves nothing that looks finished:
# the next run removes the remains and builds it again. Every mount the
# build needs (/proc, /dev) is made in a private mount namespace, so an
# interruption never leaves a mount behind either.
#
#   scripts/nix-clients.sh                 all three
#   scripts/nix-clients.sh trixie          just one
#   NIXFARM_CLIENTS_DIR=/srv/c scripts/nix-clients.sh
#   NIXFARM_DEBIAN_MIRROR=URL ...          another archive than apt's
#
# Needs root, debootstrap and util-linux (unshare); it installs debootstrap
# when it is missing.
set -euo pipefail

dir=${NIXFARM_CLIENTS_DIR:-/var/cache/nixfarm/nix-clients}
suites=("$@")
((${#suites[@]})) || suites=(bookworm trixie sid)

log() { printf '== nix-clients: %s\n' "$*"; }
die() { printf 'nix-clients: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"

# mirror prints the URI of the Debian archive apt uses for this machine's
# own release, from deb822 .sources files or one-line .list files.
mirror() {
	if [ -n "${NIXFARM_DEBIAN_MIRROR:-}" ]; then
		echo "$NIXFARM_DEBIAN_MIRROR"
		return
	fi
	local codename files
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	# deb822: a stanza whose Suites has the codename (not -security/-updates).
	# shellcheck disable=SC2086
	awk -v want="$codename" '
		BEGIN { RS = ""; FS = "\n" }
		{
			uris = ""; ok = 0
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
				if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == want) ok = 1 }
			}
			if (ok && uris != "") { split(uris, u, /[ \t]+/); print u[1]; exit }
		}' $(echo "$files" | grep '\.sources$' || true) </dev/null 2>/dev/null | head -n 1 | grep . && return
	# one-line: deb [options] URI suite components
	# shellcheck disable=SC2086
	sed -E 's/\[[^]]*\]//' $(echo "$files" | grep -v '\.sources$' || true) </dev/null 2>/dev/null |
		awk -v want="$codename" '$1 == "deb" && $3 == want { print $2; exit }' | grep . && return
	die "found no Debian archive for '$codename' in /etc/apt/sources*; set NIXFARM_DEBIAN_MIRROR"
}

# inchroot runs a command in the chroot at $1 with /proc and /dev mounted
# in a private mount namespace: nothing outlives the command, however it
# ends. (Nix from 2.26 on cannot even print its version without /proc.)
inchroot() {
	unshare --mount --propagation private /bin/sh -ec '
		root=$1; shift
		mount -t proc proc "$root/proc"
		mount --rbind /dev "$root/dev"
		exec chroot "$root" "$@"
	' sh "$@"
}

# check prints the client's `nix --version` if the chroot at $1 is complete.
check() {
	local root=$1
	[ -f "$root/.nixfarm-client" ] || return 1
	inchroot "$root" /usr/bin/nix --version 2>/dev/null
}

# build makes the chroot for suite $1 under $dir/$1.partial and renames it
# into place. Output goes to $dir/$1.log; progress lines to stdout.
build() {
	local suite=$1 url=$2
	local part="$dir/$suite.partial" final="$dir/$suite" logf="$dir/$suite.log"
	local start=$SECONDS
	rm -rf --one-file-system "$part"
	: >"$logf"
	log "$suite: debootstrap from $url (log: $logf)"
	# Sid's Release file may have expired in the archive this machine uses.
	local aptopt=() srcopt=""
	if [ "$suite" = sid ]; then
		aptopt=(-o Acquire::Check-Valid-Until=false)
		srcopt="[check-valid-until=no] "
	fi
	mkdir -p "$dir/debs/$suite"
	if ! debootstrap --variant=minbase --cache-dir="$dir/debs/$suite" "$suite" "$part" "$url" >>"$logf" 2>&1; then
		tail -n 20 "$logf" >&2
		die "$suite: debootstrap failed"
	fi
	log "$suite: base system in $((SECONDS - start)) s; installing nix-bin and openssh-client"
	echo "deb ${srcopt}$url $suite main" >"$part/etc/apt/sources.list"
	# nix-bin cannot be a debootstrap --include: its dependencies are
	# configured in the wrong order (libdbd-sqlite3-perl). apt gets it right.
	if ! inchroot "$part" /bin/sh -ec '
		/usr/bin/apt-get "$@" update -q
		DEBIAN_FRONTEND=noninteractive /usr/bin/apt-get "$@" install -y -q --no-install-recommends nix-bin openssh-client
		/usr/bin/apt-get clean
	' sh "${aptopt[@]}" >>"$logf" 2>&1; then
		tail -n 20 "$logf" >&2
		die "$suite: installing nix-bin failed"
	fi
	# A chrooted process cannot create user namespaces, so its Nix cannot
	# sandbox: it builds without one. No substituter is reachable here.
	mkdir -p "$part/etc/nix"
	cat >"$part/etc/nix/nix.conf" <<-'EOF'
		# Written by nixfarm's scripts/nix-clients.sh for the end-to-end tests.
		sandbox = false
		substituters =
		experimental-features = nix-command
	EOF
	local version
	version=$(inchroot "$part" /usr/bin/nix --version) || die "$suite: nix --version fails in the new chroot"
	echo "$version" >"$part/.nixfarm-client"
	sync -f "$part/.nixfarm-client"
	rm -rf --one-file-system "$final"
	mv "$part" "$final"
	log "$suite: $version, ready in $((SECONDS - start)) s"
}

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9 # one run at a time; a second waits for the first

todo=()
for suite in "${suites[@]}"; do
	# The remains of an interrupted run.
	if [ -e "$dir/$suite.partial" ]; then
		log "$suite: removing an unfinished chroot from an interrupted run"
		rm -rf --one-file-system "$dir/$suite.partial"
	fi
	if version=$(check "$dir/$suite"); then
		log "$suite: $version (cached in $dir/$suite)"
	else
		[ -e "$dir/$suite" ] && log "$suite: the cached chroot is broken; building it again"
		todo+=("$suite")
	fi
done
((${#todo[@]})) || exit 0

if ! command -v debootstrap >/dev/null; then
	log "installing debootstrap"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q debootstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
fi
url=$(mirror)

# The chroots are independent and mostly wait on the network: build them
# at once.
pids=()
for suite in "${todo[@]}"; do
	build "$suite" "$url" &
	pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
	wait "$pid" || failed=1
done
((failed == 0)) || die "some clients could not be built; run again to retry"
for suite in "${todo[@]}"; do
	check "$dir/$suite" >/dev/null || die "$suite: the new chroot does not run nix"
done
