#!/usr/bin/env bash
# Run the README's commands in a fresh Debian 13 (trixie) root filesystem,
# as a newcomer on Debian 13 would: Python 3.13, Open vSwitch 3.5, Mininet
# from Debian. As root, on a Debian machine:
#
#   scripts/debian13.sh                  # make demo, then make unit (the fast tests)
#   scripts/debian13.sh make test        # any command, run in the repository inside
#
# The root filesystem is made with debootstrap (minbase, under a minute) in
# $DEBIAN13_ROOT (default /var/tmp/smtp-border-trixie), from the Debian mirror
# this machine's own apt sources name, and made anew each run unless
# DEBIAN13_KEEP=1 keeps it. The repository's files (what git tracks, and what
# it does not ignore) are copied to /src inside.
#
# What the set-up needs, and why:
# * the root is bind-mounted onto itself, proc, sys and dev are mounted in
#   it, and the command runs with it as the root of a mount namespace of its
#   own (below: why Mininet needs that);
# * resolv.conf, the CA bundle and pip's configuration are copied in, so its
#   apt and pip reach the same registries as this machine;
# * Open vSwitch's userspace datapath makes its devices in the network
#   namespace it runs in, and the root filesystem shares this one (a
#   namespace of its own would have no route to the registries): this
#   machine's Open vSwitch is stopped while the root filesystem's runs, and
#   started again afterwards, whatever happens.
# Everything it mounted or started is undone on exit, failure included.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${DEBIAN13_ROOT:-/var/tmp/smtp-border-trixie}
SUITE=trixie
OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl
COMMAND=("$@")
export CI=${CI:-} SMTP_BORDER_EXAMPLES_DIVISOR=${SMTP_BORDER_EXAMPLES_DIVISOR:-}
[ ${#COMMAND[@]} -gt 0 ] || COMMAND=(bash -c 'make demo && make unit')

log() { printf 'debian13: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "debian13: run as root" >&2; exit 1; }

# The Debian mirror of this machine's apt sources (deb822 or one-line form).
mirror() {
    local files=() file uri
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] && files+=("$file")
    done
    uri=$(awk '
        /^URIs:/ { uris = $2 } /^Suites:/ { if ($2 !~ /security/) { print uris; exit } }
        /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { if ($(i + 1) !~ /security/) { print $i; exit } break } }
    ' "${files[@]}" 2>/dev/null | grep -m1 -i debian || true)
    [ -n "$uri" ] || { echo "debian13: no Debian mirror in this machine's apt sources" >&2; exit 1; }
    printf '%s\n' "$uri"
}

host_ovs_was_running=
mounted=
cleanup() {
    local status=$?
    set +e
    if [ -x "$ROOT$OVS_CTL" ] && [ -d "$ROOT/proc/1" ]; then
        chroot "$ROOT" mn -c >/dev/null 2>&1
        chroot "$ROOT" "$OVS_CTL" stop >/dev/null 2>&1
    fi
    if [ -n "$mounted" ]; then
        umount -R "$ROOT" 2>/dev/null || umount -Rl "$ROOT"
    fi
    if [ -n "$host_ovs_was_running" ]; then
        log "starting this machine's Open vSwitch again"
        "$OVS_CTL" start --system-id=random --no-monitor >/dev/null 2>&1 || log "could not restart this machine's Open vSwitch"
    fi
    if [ -z "${DEBIAN13_KEEP:-}" ] && ! grep -q " $ROOT[ /]" /proc/mounts; then
        rm -rf --one-file-system "$ROOT"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${DEBIAN13_KEEP:-}" ] || [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    rm -rf --one-file-system "$ROOT"
    started=$(date +%s)
    uri=$(mirror)
    log "debootstrap --variant=minbase $SUITE into $ROOT"
    debootstrap --variant=minbase --include=make,ca-certificates "$SUITE" "$ROOT" "$uri" >"$ROOT.debootstrap.log" 2>&1 \
        || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
    rm -f "$ROOT.debootstrap.log"
    log "root filesystem made in $(( $(date +%s) - started )) s"
fi

mounted=1
mount --bind "$ROOT" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"
mount --make-rslave "$ROOT/dev"
mount -t tmpfs tmpfs "$ROOT/run"

cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
[ ! -f /etc/ssl/certs/ca-certificates.crt ] || cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
for conf in /etc/pip.conf /etc/xdg/pip /root/.config/pip; do
    [ -e "$conf" ] || continue
    mkdir -p "$ROOT$(dirname "$conf")"
    cp -a "$conf" "$ROOT$(dirname "$conf")/"
done
# Daemons that packages would start (etcd, prometheus): not here either.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"

mkdir -p "$ROOT/src"  # (a kept root keeps its virtualenv)
git -C "$REPO" ls-files -z --cached --others --exclude-standard | (cd "$REPO" && tar --null -T - -cf -) | tar -xf - -C "$ROOT/src"

if "$OVS_CTL" status >/dev/null 2>&1; then
    host_ovs_was_running=1
    log "stopping this machine's Open vSwitch while Debian 13's runs (one userspace datapath per namespace)"
    "$OVS_CTL" stop >/dev/null
fi

log "running in Debian 13: ${COMMAND[*]}"
# Not a plain chroot: Mininet starts each host's programs with `mnexec -a`,
# which enters the host's mount namespace, and entering one resets the root
# to that namespace's own root. So the command runs in a mount namespace of
# its own whose root *is* the Debian 13 tree (pivot_root; this is why the
# tree must be a mount point), and a host's programs find /src there too.
mkdir -p "$ROOT/.host-root"
unshare --mount --propagation private -- /bin/sh -c '
    cd "$1" && pivot_root . .host-root && cd / && shift &&
    exec /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        TERM="${TERM:-dumb}" LANG=C.UTF-8 CI="$CI" SMTP_BORDER_EXAMPLES_DIVISOR="$SMTP_BORDER_EXAMPLES_DIVISOR" /bin/bash -c '"'"'
        umount -l /.host-root && cd /src && . /etc/os-release && echo "debian13: $PRETTY_NAME" && exec "$@"'"'"' bash "$@"
' sh "$ROOT" "${COMMAND[@]}"
