#!/usr/bin/env bash
# Set up everything smtp-border needs on Debian 12, as root, idempotently:
# Debian packages (Mininet, Open vSwitch, test tools), a running Open vSwitch,
# and the project's virtualenv (.venv) with the project on its OpenFlow framework.
# Called by `make demo`, `make test` and .ci/run; safe to run again.
#   VENV=DIR         the virtualenv (default .venv)
#   PYTHON=PATH      the interpreter it is made with (default python3: 3.11 on
#                    Debian 12, 3.13 on Debian 13; 3.11 to 3.13 are tested)
#   FRAMEWORK=NAME   ryu (default: stock ryu-manager works) or os-ken
#   TESTS=1          also what the whole test suite needs (make test)
#   APT=0            skip the Debian packages and Open vSwitch (a second
#                    virtualenv on a machine already set up)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-/usr/bin/python3}
FRAMEWORK=${FRAMEWORK:-ryu}
case "$FRAMEWORK" in ryu|os-ken) ;; *) echo "setup: FRAMEWORK=$FRAMEWORK: use ryu or os-ken" >&2; exit 2;; esac
# What the controller, the demo and the fast tests need.
APT_PACKAGES=(
    mininet openvswitch-switch openvswitch-common   # the testbed and its switch
    python3 python3-venv python3-pip                # the virtualenv
    iproute2 ethtool iputils-ping netcat-openbsd    # host set-up and probes
    procps psmisc                                   # pkill/fuser for clean-up
)
# And what the whole test suite needs besides (TESTS=1: make test).
TEST_PACKAGES=(
    hping3                                          # SYN floods in the audit tests
    iperf3                                          # throughput in mininet/bench.py
    chromium                                        # a real browser for the hostile-page test
    openssl                                         # certificates for the OpenFlow-over-TLS test
    etcd-server                                     # the shared store of several controllers (docs/ha.md)
    prometheus                                      # promtool: the alert rules are checked and unit-tested
    systemd logrotate                               # systemd-analyze and logrotate check deploy/
)
[ "${TESTS:-0}" = 0 ] || APT_PACKAGES+=("${TEST_PACKAGES[@]}")

log() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (Mininet and Open vSwitch need it)" >&2
    exit 1
fi

missing=()
[ "${APT:-1}" = 0 ] && APT_PACKAGES=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # Packages with daemons (etcd, prometheus) must not start them: the tests
    # start their own on loopback. policy-rc.d says so to their scripts.
    guard=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
fi

# No systemd here (containers, CI): start OVS by hand. The kernel module may be
# missing; the topologies use the userspace datapath, which does not need it.
if [ "${APT:-1}" != 0 ] && ! ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
    log "starting Open vSwitch"
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random --no-monitor 2>&1 \
        | grep -v 'ulimit' || true
    ovs-vsctl --timeout=10 show >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Ryu 4.34's setup.py needs setuptools < 67 in its build environment; the
# constraint reaches pip's isolated build environments too.
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
log "installing smtp-border on $FRAMEWORK and its dependencies into $VENV ($("$VENV/bin/python" -V))"
# Editable: the tests, the demo and the controller all run the working tree.
"$VENV/bin/pip" install -q -e ".[$FRAMEWORK,test]"
package=${FRAMEWORK/-/_}
# Compile the framework once so that its SyntaxWarnings are not printed at every start
# (they are harmless; PYTHONDONTWRITEBYTECODE would otherwise keep them coming).
"$VENV/bin/python" -m compileall -q "$("$VENV/bin/python" -c "import $package, os; print(os.path.dirname($package.__file__))")" >/dev/null 2>&1 || true
SMTP_BORDER_FRAMEWORK=$FRAMEWORK "$VENV/bin/smtp-border-controller" --version
if [ "$FRAMEWORK" = ryu ]; then
    "$VENV/bin/ryu-manager" --version >/dev/null
    log "ready: $VENV/bin/ryu-manager ryu_apps.smtp_policy (or $VENV/bin/smtp-border-controller)"
else
    log "ready: $VENV/bin/smtp-border-controller"
fi
