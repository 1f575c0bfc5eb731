#!/bin/bash
# `make clean`: the last resort after an interrupted test run. Stops the
# controllers the tests started, by the pid files mininet/lab.py writes, and
# only those still running a controller: never a controller it did not start
# (a production one on the same host). Then Mininet's own cleanup, where
# Mininet is installed (a test machine).
set -u
PID_DIR=${SMTP_BORDER_TEST_PIDS:-/var/tmp/smtp-border-test-pids}
for file in "$PID_DIR"/*; do
    [ -e "$file" ] || continue
    pid=$(basename "$file")
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -Eq 'ryu-manager|smtp-border-controller'; then
        echo "stopping test controller $pid"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    fi
    rm -f "$file"
done
if [ "${SMTP_BORDER_CLEAN_MININET:-1}" = 1 ] && command -v mn >/dev/null; then
    mn -c >/dev/null 2>&1 || true
fi
