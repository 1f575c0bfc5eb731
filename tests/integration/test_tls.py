"""The OpenFlow channel over TLS, with real Open vSwitch: switches with a
certificate from the campus CA get the policy (two of them, which Ryu 4.34
alone fails: ryu_apps/tls.py); a switch whose certificate the CA did not
sign, and a peer without TLS, get nothing."""
import os
import socket
import subprocess
import time

import pytest

from conftest import ROOT, wait_for
from lab import Controller

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Open vSwitch needs root"),
]
BRIDGES = {"smtptls1": 1, "smtptls2": 2, "smtptls3": 3, "smtptls4": 4}  # 1, 3 genuine (3 pinned); 2 rogue; 4 pinned to another


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def certificates(directory):
    """A campus CA; the controller's and the switches' certificates signed by
    it; and a rogue switch certificate, self-signed."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=campus OpenFlow CA", cwd=directory)
    for name in ("controller", "switch"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", cwd=directory)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
            "-subj", "/CN=switch", cwd=directory)
    return {name: directory / name for name in ("ca.pem", "controller.key", "controller.pem", "switch.key",
                                                  "switch.pem", "rogue.key", "rogue.pem")}


def fingerprint(certificate):
    out = subprocess.run(["openssl", "x509", "-in", str(certificate), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split("=", 1)[1]  # AB:CD:..., as an operator would paste it


def vsctl(*args):
    subprocess.run(["ovs-vsctl", *args], check=True, capture_output=True)


def add_bridge(name, dpid):
    vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "protocols=OpenFlow13",
           "fail_mode=secure", f"other-config:datapath-id={dpid:016x}")


def flow_count(bridge):
    dump = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge], capture_output=True, text=True).stdout
    return dump.count("cookie=")


@pytest.fixture
def tls_setup(tmp_path):
    files = certificates(tmp_path)
    for name in BRIDGES:
        vsctl("--if-exists", "del-br", name)
    try:
        yield files
    finally:
        for name in BRIDGES:
            subprocess.run(["ovs-vsctl", "--if-exists", "del-br", name], capture_output=True)
        subprocess.run(["ovs-vsctl", "del-ssl"], capture_output=True)


def test_only_switches_with_a_campus_certificate_get_the_policy(tls_setup, tmp_path):
    files = tls_setup
    policy = tmp_path / "policy.yaml"
    # dpid 3 is pinned to the switches' certificate, dpid 4 to another one.
    pins = {name: fingerprint(files[name]) for name in ("switch.pem", "rogue.pem")}
    policy.write_text((ROOT / "policy.yaml").read_text().replace(
        "switches:\n", "switches:\n  - {dpid: 2, uplinks: [1]}\n"
        f"  - {{dpid: 3, uplinks: [1], certificate_sha256: \"{pins['switch.pem']}\"}}\n"
        f"  - {{dpid: 4, uplinks: [1], certificate_sha256: \"{pins['rogue.pem']}\"}}\n"))
    controller = Controller(policy, tmp_path / "ryu-manager.txt",
                            tls=(files["controller.key"], files["controller.pem"], files["ca.pem"])).start()
    try:
        target = f"ssl:127.0.0.1:{controller.of_port}"
        vsctl("set-ssl", str(files["switch.key"]), str(files["switch.pem"]), str(files["ca.pem"]))
        for name in ("smtptls1", "smtptls3"):
            add_bridge(name, BRIDGES[name])
            vsctl("set-controller", name, target)
        controller.wait_installs({1: 1, 3: 1}, timeout=60)
        assert flow_count("smtptls1") == flow_count("smtptls3") > 20

        # A campus certificate, but dpid 4 is pinned to another: no policy, connection closed.
        add_bridge("smtptls4", 4)
        vsctl("set-controller", "smtptls4", target)
        assert wait_for(lambda: "claims dpid 0000000000000004, pinned to certificate" in controller.log(), 20)
        assert flow_count("smtptls4") == 0

        # A peer without TLS gets no OpenFlow session: its hello goes unanswered.
        with socket.create_connection(("127.0.0.1", controller.of_port), timeout=5) as plain:
            plain.sendall(bytes.fromhex("0400000800000001"))  # OFPT_HELLO, OpenFlow 1.3
            plain.settimeout(3)
            try:
                answer = plain.recv(64)
            except (socket.timeout, ConnectionResetError):
                answer = b""
        assert not answer.startswith(b"\x04\x00"), answer

        # A switch whose certificate the CA did not sign gets nothing.
        vsctl("set-ssl", str(files["rogue.key"]), str(files["rogue.pem"]), str(files["ca.pem"]))
        add_bridge("smtptls2", BRIDGES["smtptls2"])
        vsctl("set-controller", "smtptls2", target)
        time.sleep(5)  # several connection attempts
        assert flow_count("smtptls2") == 0
        log = controller.log()
        assert "switch 0000000000000002" not in log
        assert wait_for(lambda: "OpenFlow TLS handshake from 127.0.0.1" in controller.log(), 10)
        connected = [s["dpid"] for s in controller.api("GET", "/smtp/v1/switches")[1]["switches"] if s["connected"]]
        assert "0000000000000002" not in connected
    finally:
        controller.stop()
