"""The README's demo: it runs end to end, and it notices when the network
does not do what the policy says."""
import os
import subprocess
import sys

import pytest
import yaml

import campus
from conftest import ROOT

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet and Open vSwitch need root"),
]
DEMO = ROOT / "mininet" / "demo.py"


def run_demo(*args):
    return subprocess.run(
        [sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_demo_plays_every_clause_as_the_policy_says():
    result = run_demo()
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = 2 * len(campus.SCENARIOS)
    assert result.stdout.count("  ok\n") == steps
    assert f"{steps} steps, all as the policy says." in result.stdout


def test_demo_fails_when_the_network_differs(tmp_path):
    """Run the demo against a policy without the departmental exception: the
    network then blocks what the demo's script expects to be allowed."""
    document = yaml.safe_load((ROOT / "policy.yaml").read_text())
    document["exceptions"] = [e for e in document["exceptions"] if e["direction"] != "inbound"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document))
    result = run_demo("--policy", str(policy))
    assert result.returncode == 1
    assert "2 differ from the policy" in result.stdout
    assert "inbound exception) (IPv4)" in result.stdout and "inbound exception) (IPv6)" in result.stdout
