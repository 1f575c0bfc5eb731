"""Slow clients cannot hold the API: more idle connections than it serves at
once, each stuck in the middle of its request line, are dropped after the
socket timeout, and a normal client is answered meanwhile."""
import os
import shutil
import socket
import time

import pytest

from conftest import ROOT, wait_for
from lab import Controller

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs the controller as the other integration tests do"),
]
SLOW_CLIENTS = 300  # well over the 128 connections served at once
TIMEOUT = 2  # seconds (SMTP_POLICY_HTTP_TIMEOUT; 10 by default)


def test_slow_clients_are_dropped_and_others_answered(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTP_POLICY_HTTP_TIMEOUT", str(TIMEOUT))
    policy = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "policy.yaml", policy)
    controller = Controller(policy, tmp_path / "ryu-manager.txt").start()
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", controller.api_port), timeout=30)
            sock.sendall(b"GET /smtp/v1/pol")  # and nothing more
            slow.append(sock)
        started = time.monotonic()
        status, body = controller.api("GET", "/smtp/v1/policy", timeout=30)
        answered = time.monotonic() - started
        assert status == 200 and body["campus"]["prefixes"]

        def dropped(sock):
            sock.settimeout(0.01)
            try:
                return sock.recv(1) == b""
            except socket.timeout:
                return False
            except OSError:
                return True

        assert wait_for(lambda: all(dropped(s) for s in slow), timeout=5 * TIMEOUT)
        print(f"\n{SLOW_CLIENTS} slow clients: a normal request answered in {answered:.2f} s;"
              f" all slow ones dropped within {time.monotonic() - started:.1f} s")
        assert controller.process.poll() is None
    finally:
        for sock in slow:
            sock.close()
        controller.stop()
