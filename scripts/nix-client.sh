#!/usr/bin/env bash
# Runs a command with one of the stock Nix clients that scripts/nix-clients.sh
# provides, in a root of its own: an overlay of the cached chroot, so the
# chroot itself never changes and every run starts from a clean
# /nix/store. The overlay and every mount it needs exist only in a private
# mount namespace, so nothing outlives the command, however it ends.
#
# Inside, the host's temporary directory ($TMPDIR or /tmp) is at the same
# path, and so are the host's users and Nix's pool of build users
# (/nix/var/nix/userpool): the client is another Nix on this machine, as a
# user's Nix would be. The client's own builds run without a sandbox (its
# nix.conf says so).
#
# The root is the mount namespace's own (pivot_root), not a chroot inside
# the host's root: a process that sets its mount namespace again (Nix 2.8
# does, before it starts ssh) lands in the client's root, never the host's.
#
#   scripts/nix-client.sh sid nix --version
#   scripts/nix-client.sh trixie                  an interactive shell
#   scripts/nix-client.sh --bind DIR sid CMD...   DIR too, at the same path
#   scripts/nix-client.sh --upper DIR sid CMD...  keep what CMD writes in DIR,
#                                                 for the next run to find
#
# The end-to-end tests hold one such root open per client with --upper, and
# enter it with nsenter for each command.
set -euo pipefail

die() { printf 'nix-client: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: nix-client.sh [--upper DIR] [--bind DIR]... SUITE [COMMAND [ARG]...]"; }

upper="" binds=()
while [ $# -gt 0 ]; do
	case $1 in
	--upper) [ $# -ge 2 ] || usage; upper=$2; shift 2 ;;
	--bind) [ $# -ge 2 ] || usage; binds+=("$(realpath "$2")"); shift 2 ;;
	-*) usage ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || usage
suite=$1
shift
[ $# -gt 0 ] || set -- /bin/bash

[ "$(id -u)" = 0 ] || die "must run as root (the mounts need it)"
[[ $suite =~ ^[a-z]+$ ]] || die "unknown release '$suite'"
dir=$(realpath -m "${NIXFARM_CLIENTS_DIR:-/var/cache/nixfarm/nix-clients}")
lower=$dir/$suite
# Hold the clients' lock shared while the client runs, so that
# nix-clients.sh never rebuilds the chroot under it (the lock goes with the
# file descriptor into the command, and ends with it).
[ -d "$dir" ] || die "there is no $suite client; run scripts/nix-clients.sh $suite"
exec 9>>"$dir/.lock"
flock -s 9
[ -f "$lower/.nixfarm-client" ] || die "there is no $suite client; run scripts/nix-clients.sh $suite"

scratch=""
if [ -z "$upper" ]; then
	scratch=$(mktemp -d)
	upper=$scratch
	trap 'rm -rf --one-file-system "$scratch"' EXIT
fi
mkdir -p "$upper/upper" "$upper/work" "$upper/root"
upper=$(realpath "$upper")
tmp=$(realpath "${TMPDIR:-/tmp}")
# Nix's pool of build users is the machine's; make sure it exists here,
# as any Nix building as root would, so that the client shares it.
mkdir -p /nix/var/nix/userpool

# The directories to bind travel as arguments of their own, between the
# root and the command, so no name is split or globbed.
run=(unshare --mount --propagation private /bin/sh -ec '
	lower=$1 upper=$2 nbind=$3
	shift 3
	root=$upper/root
	mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper/upper,workdir=$upper/work" "$root"
	mount -t proc proc "$root/proc"
	mount --rbind /dev "$root/dev"
	while [ "$nbind" -gt 0 ]; do
		mkdir -p "$root$1"
		mount --bind "$1" "$root$1"
		shift
		nbind=$((nbind - 1))
	done
	# The machine users, read-only: a shell inside must not edit them.
	for f in /etc/passwd /etc/group; do
		mount --bind "$f" "$root$f"
		mount -o remount,bind,ro "$root$f"
	done
	mkdir -p "$root/nix/var/nix/userpool"
	mount --bind /nix/var/nix/userpool "$root/nix/var/nix/userpool"
	# The root becomes the namespace'"'"'s own, not a chroot: whatever enters
	# the namespace (setns, nsenter --mount) lands in it, as Nix 2.8 does
	# before it starts ssh. The host'"'"'s root goes, lazily, with every
	# mount under it; what was mounted in the new root stays.
	mkdir -p "$root/.nix-client-old-root"
	cd "$root"
	pivot_root . .nix-client-old-root
	cd /
	umount -l /.nix-client-old-root
	rmdir /.nix-client-old-root
	exec /usr/bin/env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"
' sh "$lower" "$upper" "$((${#binds[@]} + 1))" "$tmp" "${binds[@]}" "$@")

if [ -n "$scratch" ]; then
	"${run[@]}"
else
	# The caller may hold this process: it must be the one in the namespace.
	exec "${run[@]}"
fi
