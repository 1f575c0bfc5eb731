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


# Before it builds anything, mn checks the remote controller with telnet and
# decodes what telnet printed as strict UTF-8. Ryu greets every connection
# with an OpenFlow hello whose 4-byte xid is random: now and then telnet
# prints it, and mn dies with UnicodeDecodeError (Mininet 2.3.0,
# mininet/node.py isListening). That one failure, which happens before any
# switch exists, is tried again; any other is the test's.
MN_TELNET_FAILURE = "UnicodeDecodeError: 'utf-8' codec can't decode byte"
MN_ATTEMPTS = 3


def test_mn_custom_campus_pingall(tmp_path):
    mn = shutil.which("mn")
    assert mn, "Debian's mininet package provides mn"
    controller = Controller(ROOT / "policy.yaml", tmp_path / "ryu-manager.txt").start()
    try:
        for attempt in range(MN_ATTEMPTS):
            result = subprocess.run(
                [
                    mn, "--custom", str(ROOT / "mininet" / "campus.py"), "--topo", "campus",
                    "--controller", f"remote,ip=127.0.0.1,port={controller.of_port}",
                    "--switch", "ovs,datapath=user,protocols=OpenFlow13", "--test", "pingall",
                ],
                capture_output=True, text=True, timeout=180,
            )
            output = result.stdout + result.stderr
            if MN_TELNET_FAILURE not in output:
                break
            print(f"mn attempt {attempt + 1}: its telnet check of the controller could not decode the reply")
        assert result.returncode == 0, output
        assert "Results: 0% dropped (42/42 received)" in output
        assert controller.installs(1) == 1
    finally:
        controller.stop()
