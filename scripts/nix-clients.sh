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
# the next run removes the remains and builds it again. Everything that
# mounts (debootstrap, apt in the chroot) runs in a private mount
# namespace, so an interruption never leaves a mount behind either, and
# an interrupted run stops the builds it started.
#
# Each release must bring the Nix version above: the tests, their golden
# sessions and the README are named after it. A release whose Nix moved on
# (sid does) makes this script fail with what to update.
#
# Runs take .lock in the cache directory: shared to check, exclusive to
# build. scripts/nix-client.sh holds it shared while a client runs, so a
# chroot is never rebuilt under a running client.
#
#   scripts/nix-clients.sh                 all three
#   scripts/nix-clients.sh trixie          just one
#   NIXFARM_CLIENTS_DIR=/srv/c scripts/nix-clients.sh
#   NIXFARM_DEBIAN_MIRROR=URL ...          another archive than apt's
#
# Needs root, debootstrap and util-linux (unshare, flock); it installs
# debootstrap when it is missing.
set -euo pipefail

dir=$(realpath -m "${NIXFARM_CLIENTS_DIR:-/var/cache/nixfarm/nix-clients}")
suites=("$@")
((${#suites[@]})) || suites=(bookworm trixie sid)

log() { printf '== nix-clients: %s\n' "$*"; }
die() { printf 'nix-clients: %s\n' "$*" >&2; exit 1; }

# expected is the Nix version (major.minor) each release must bring.
expected() {
	case $1 in
	bookworm) echo 2.8 ;;
	trixie) echo 2.26 ;;
	sid) echo 2.34 ;;
	*) return 1 ;;
	esac
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
for suite in "${suites[@]}"; do
	expected "$suite" >/dev/null || die "unknown release '$suite' (known: bookworm, trixie, sid)"
done

# mirror prints the URI of the Debian archive apt uses for this machine's
# own release, from deb822 .sources files or one-line .list files: an
# entry for the release's codename with the main component, over http,
# https or file (mirror+ lists are read for their first entry), and not
# disabled. Nothing else is guessed: no host name is built in.
mirror() {
	if [ -n "${NIXFARM_DEBIAN_MIRROR:-}" ]; then
		echo "$NIXFARM_DEBIAN_MIRROR"
		return
	fi
	local codename uri f
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	local sources=() lists=()
	for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && sources+=("$f"); done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && lists+=("$f"); done
	uri=$(
		set +o pipefail
		{
			if ((${#sources[@]})); then
				awk -v want="$codename" '
					BEGIN { RS = ""; FS = "\n" }
					{
						uris = ""; suite = 0; main = 0; off = 0; deb = 0
						for (i = 1; i <= NF; i++) {
							line = $i
							if (line ~ /^URIs:/) { uris = line; sub(/^URIs:[ \t]*/, "", uris) }
							if (line ~ /^Types:/ && line ~ /[ \t]deb([ \t]|$)/) deb = 1
							if (line ~ /^Enabled:[ \t]*no/) off = 1
							if (line ~ /^Suites:/) { n = split(line, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == want) suite = 1 }
							if (line ~ /^Components:/) { n = split(line, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == "main") main = 1 }
						}
						if (deb && suite && main && !off && uris != "") { n = split(uris, u, /[ \t]+/); for (j = 1; j <= n; j++) print u[j] }
					}' "${sources[@]}"
			fi
			# one-line: deb [options] URI suite component...
			if ((${#lists[@]})); then
				sed -E 's/\[[^]]*\]//; s/#.*//' "${lists[@]}" |
					awk -v want="$codename" '$1 == "deb" && $3 == want { for (i = 4; i <= NF; i++) if ($i == "main") print $2 }'
			fi
		} 2>/dev/null | while read -r u; do
			case $u in
			mirror+file:*)
				# A list of mirrors, one per line: take the first usable.
				sed -E 's/#.*//; s/[ \t].*//' "${u#mirror+file:}" 2>/dev/null | grep -E '^(https?|file):' | head -n 1
				;;
			http://* | https://* | file:*) echo "$u" ;;
			esac
		done | head -n 1
	)
	[ -n "$uri" ] || die "found no Debian archive (an http, https or file source of '$codename' with the main component) in /etc/apt/sources*; set NIXFARM_DEBIAN_MIRROR"
	echo "$uri"
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
	# debootstrap mounts /proc and /sys in the target itself.
	if ! unshare --mount --propagation private \
		debootstrap --variant=minbase --cache-dir="$dir/debs/$suite" "$suite" "$part" "$url" >>"$logf" 2>&1; then
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
	local version want
	version=$(inchroot "$part" /usr/bin/nix --version) || die "$suite: nix --version fails in the new chroot"
	want=$(expected "$suite")
	case "${version##* }" in
	"$want" | "$want".*) ;;
	*) die "$suite now has ${version##* }, not Nix $want: the end-to-end tests, the golden sessions (testdata/gen.sh $suite) and the README are named after $want; update expected() here and them together" ;;
	esac
	echo "$version" >"$part/.nixfarm-client"
	sync -f "$part/.nixfarm-client"
	rm -rf --one-file-system "$final"
	mv "$part" "$final"
	log "$suite: $version, ready in $((SECONDS - start)) s"
}

# survey sorts the suites into those whose chroot is complete (logged) and
# those to build (printed, one per line).
survey() {
	local suite version
	for suite in "${suites[@]}"; do
		if version=$(check "$dir/$suite"); then
			log "$suite: $version (cached in $dir/$suite)" >&2
		else
			echo "$suite"
		fi
	done
}

mkdir -p "$dir"
exec 9>>"$dir/.lock"
flock -s 9
mapfile -t todo < <(survey)
((${#todo[@]})) || exit 0

# Building needs the lock alone: no other run, and no client running from
# a chroot that may be replaced. Taking it drops the shared lock first, so
# look again once it is held.
flock -n 9 || {
	log "waiting for the other users of $dir to finish"
	flock 9
}
mapfile -t todo < <(survey 2>/dev/null)
((${#todo[@]})) || exit 0
for suite in "${todo[@]}"; do
	if [ -e "$dir/$suite.partial" ]; then
		log "$suite: removing an unfinished chroot from an interrupted run"
	elif [ -e "$dir/$suite" ]; then
		log "$suite: the cached chroot is broken; building it again"
	fi
done

if ! command -v debootstrap >/dev/null; then
	log "installing debootstrap"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q debootstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
fi
url=$(mirror)

# killtree ends a process and everything it started: background jobs of a
# script ignore SIGINT, so an interrupted run must stop them itself.
killtree() {
	local child
	for child in $(pgrep -P "$1" 2>/dev/null); do
		killtree "$child"
	done
	kill -TERM "$1" 2>/dev/null || true
}

# The chroots are independent and mostly wait on the network: build them
# at once.
pids=()
trap 'for pid in "${pids[@]}"; do killtree "$pid"; done; wait; exit 130' INT TERM
for suite in "${todo[@]}"; do
	build "$suite" "$url" &
	pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
	wait "$pid" || failed=1
done
trap - INT TERM
((failed == 0)) || die "some clients could not be built; run again to retry"
for suite in "${todo[@]}"; do
	check "$dir/$suite" >/dev/null || die "$suite: the new chroot does not run nix"
done
