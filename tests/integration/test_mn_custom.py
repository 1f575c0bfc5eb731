"""mininet/campus.py also works with Debian's `mn --custom`, as the docs say."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT
from lab import Controller

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet and Open vSwitch need root"),
]


def test_mn_custom_campus_pingall(tmp_path):
    mn = shutil.which("mn")
    assert mn, "Debian's mininet package provides mn"
    controller = Controller(ROOT / "policy.yaml", tmp_path / "ryu-manager.txt").start()
    try:
        result = subprocess.run(
            [
                mn, "--custom", str(ROOT / "mininet" / "campus.py"), "--topo", "campus",
                "--controller", f"remote,ip=127.0.0.1,port={controller.of_port}",
                "--switch", "ovs,datapath=user,protocols=OpenFlow13", "--test", "pingall",
            ],
            capture_output=True, text=True, timeout=180,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Results: 0% dropped (42/42 received)" in output
        assert controller.installs(1) == 1
    finally:
        controller.stop()
