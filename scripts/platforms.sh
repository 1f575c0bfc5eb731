#!/usr/bin/env bash
# The platform matrix (docs/running.md#platforms), as root, after `make test`
# or `make setup` on Debian 12:
#
#   python3.12, python3.13   the unit suite on Ryu, in a virtualenv each
#   os-ken                   the unit suite, the launcher and the Mininet campus test on os-ken 4.2 (Python 3.13)
#   debian13                 `make demo` and `make unit` in a fresh Debian 13 root filesystem (scripts/debian13.sh)
#
#   scripts/platforms.sh                 # all of them
#   scripts/platforms.sh os-ken debian13 # some
#
# The interpreters come from pyenv where the machine has it (PYENV_ROOT,
# default ~/.pyenv), else from PATH. Virtualenvs go in .venv-<name>, beside .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ALL=(python3.12 python3.13 os-ken debian13)
# Every test runs on each platform; property tests draw a tenth of their
# examples (tests/strategies.py): `make test` proves the logic in full.
export SMTP_BORDER_EXAMPLES_DIVISOR=${SMTP_BORDER_EXAMPLES_DIVISOR:-10}
WANTED=("$@")
[ ${#WANTED[@]} -gt 0 ] || WANTED=("${ALL[@]}")

log() { printf 'platforms: %s\n' "$*"; }

interpreter() {  # interpreter 3.12 -> the path of a python3.12
    local version=$1 found
    for found in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version"; do
        [ -x "$found" ] && { echo "$found"; return; }
    done
    command -v "python$version" || { echo "platforms: no python$version here (pyenv or PATH)" >&2; exit 1; }
}

timed() {  # timed NAME COMMAND...: run it, say how long it took
    local name=$1 started=$SECONDS
    shift
    log "== $name"
    "$@"
    log "== $name passed in $((SECONDS - started)) s"
}

unit_suite() {  # unit_suite VENV [FRAMEWORK]
    SMTP_BORDER_FRAMEWORK=${2:-} "$1/bin/python" -m pytest -q -p no:cacheprovider tests/unit
}

for platform in "${WANTED[@]}"; do
    case "$platform" in
        python3.1[23])
            version=${platform#python}
            venv=.venv-$platform
            timed "$platform: setup" env APT=0 VENV="$venv" PYTHON="$(interpreter "$version")" bash scripts/setup.sh
            timed "$platform: unit suite on Ryu" unit_suite "$venv"
            ;;
        os-ken)
            venv=.venv-os-ken
            timed "os-ken: setup" env APT=0 VENV="$venv" FRAMEWORK=os-ken PYTHON="$(interpreter 3.13)" bash scripts/setup.sh
            if "$venv/bin/python" -c 'import ryu' 2>/dev/null; then
                echo "platforms: Ryu is installed in $venv: pip install .[os-ken] must not bring it" >&2
                exit 1
            fi
            timed "os-ken: unit suite" unit_suite "$venv" os-ken
            timed "os-ken: the launcher and the campus in Mininet" \
                env SMTP_BORDER_FRAMEWORK=os-ken "$venv/bin/python" -m pytest -v -p no:cacheprovider \
                tests/integration/test_ryu_manager.py \
                "tests/integration/test_campus_mininet.py::test_every_clause_in_both_ip_versions" \
                "tests/integration/test_campus_mininet.py::test_switches_hold_exactly_the_compiled_flows" \
                "tests/integration/test_campus_mininet.py::test_controller_restart_resyncs_stale_flows"
            ;;
        debian13)
            timed "debian13: make demo, make unit" bash scripts/debian13.sh
            ;;
        *)
            echo "platforms: unknown platform $platform; choose from ${ALL[*]}" >&2
            exit 2
            ;;
    esac
done
log "every platform asked for passed: ${WANTED[*]}"
