"""The README's demo: it runs end to end, and it notices when the network
does not do what the policy says."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    mail_steps = out.split("Part A.")[1].split("Part B.")[0].count("policy says:")
    steps = mail_steps + 2 * len(campus.SCENARIOS)
    assert out.count("  ok\n") == steps and "DIFFERS" not in out
    assert f"{steps} steps, all as the policy says." in out
    # The mail really went where the policy sends it.
    assert out.count("outmx received <") == 3  # via the relay, the 60 MB exception, the REST exception
    assert out.count("dept received <") == 1
    assert "server said: 550 5.7.1 Relaying denied" in out
    assert "server said: 552 " in out and "(60 MB)" in out
    assert out.count("no SMTP greeting") == 3


def test_demo_fails_when_the_network_differs(tmp_path):
    """Run the demo against a policy without the departmental exception: the
    network then blocks what the demo's script expects to be allowed."""
    document = yaml.safe_load((ROOT / "policy.yaml").read_text())
    document["exceptions"] = [e for e in document["exceptions"] if e["direction"] != "inbound"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document))
    result = run_demo("--policy", str(policy))
    assert result.returncode == 1
    assert "3 differ from the policy" in result.stdout
    assert "  - 3. Part 1 exception: the outside sender mails the departmental mail system" in result.stdout
    assert "inbound exception) (IPv4)" in result.stdout and "inbound exception) (IPv6)" in result.stdout


def test_demo_help():
    result = subprocess.run([sys.executable, str(DEMO), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--keep" in result.stdout and "real mail" in result.stdout


def processes_mentioning(text):
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(proc.name)
    return found


@pytest.mark.parametrize("after", [2.0, 8.0])
def test_ctrl_c_stops_everything(tmp_path, after):
    """Interrupted while building the network, or while mail is flowing: no
    process, bridge or host interface is left."""
    workdir = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, str(DEMO), "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=120)
    assert demo.returncode == 130, out + err
    assert "interrupted: network, mail servers and controller stopped" in err
    assert processes_mentioning(str(workdir)) == []
    assert subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout == ""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "s1-eth" not in links and "h1-eth" not in links
