"""Run the campus with a real ryu-manager and Open vSwitch, and probe it.

Shared by the tests and the demo. Lab is a context manager: whatever happens
inside, leaving it stops Mininet, removes the bridges and kills the controller.
"""
import contextlib
import email
import email.policy
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mininet.clean import cleanup as mininet_cleanup
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import OVSSwitch, RemoteController

import campus

HERE = Path(__file__).resolve().parent
PROBE = HERE / "probe.py"
CRAFT = HERE / "craft.py"
MAILSERVER = HERE / "mailserver.py"
SENDMAIL = HERE / "sendmail.py"
VENV_BIN = Path(sys.executable).parent
RYU_MANAGER = VENV_BIN / "ryu-manager"
APP = "ryu_apps.smtp_policy"


def launcher(bin_dir=VENV_BIN):
    """The command that starts the controller from a virtualenv's bin: stock
    ryu-manager with the app where Ryu is installed (how operators run it),
    else smtp-border-controller (os-ken has no manager). (program, trailing args)"""
    ryu_manager = Path(bin_dir) / "ryu-manager"
    if ryu_manager.exists():
        return ryu_manager, [APP]
    return Path(bin_dir) / "smtp-border-controller", []

LISTEN_PORTS = (25, 587, 2525)  # TCP and UDP probe listeners; with mail servers, TCP 25 is theirs
INSTALLED = re.compile(r"smtp-border: switch ([0-9a-f]{16}) .*flows installed")
OPENFLOW_ERROR = "smtp-border: OpenFlow error"


# Controllers the tests start are written here, one file a pid, so that
# `make clean` (scripts/clean.sh) stops those and never a controller it did
# not start (a production one on the same host).
PID_DIR = Path(os.environ.get("SMTP_BORDER_TEST_PIDS", "/var/tmp/smtp-border-test-pids"))


def remember_pid(pid):
    PID_DIR.mkdir(parents=True, exist_ok=True)
    (PID_DIR / str(pid)).write_text(f"{pid}\n")


def forget_pid(pid):
    (PID_DIR / str(pid)).unlink(missing_ok=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Controller:
    """A controller process running ryu_apps.smtp_policy (ryu-manager, or
    smtp-border-controller on os-ken: launcher()), logging to a file.
    `bin_dir`: the virtualenv's bin to run it from (default this one's)."""

    def __init__(self, policy_file, log_file, state_file=None, token=None, bundles=True, audit_seconds=1.0, tls=None,
                 env=None, audit_log=None, bin_dir=VENV_BIN):
        self.policy_file = Path(policy_file)
        self.log_file = Path(log_file)
        # API exceptions go beside the log, never into the repository.
        self.state_file = Path(state_file or self.log_file.with_name("api-exceptions.json"))
        # Replicas beside each other need one each: every replica records every attempt.
        self.audit_log = Path(audit_log or self.log_file.with_name("blocked.jsonl"))
        self.token = token
        self.bundles = bundles
        # Tests audit every second so that repairs show quickly; the default is 5 s.
        self.audit_seconds = audit_seconds
        # (key, certificate, CA) files: OpenFlow over TLS on of_port, switches need a certificate from the CA.
        self.tls = tls
        self.env = dict(env or {})  # more environment (SMTP_POLICY_ETCD, ...)
        self.program, self.trailing = launcher(bin_dir)
        self.of_port = free_port()
        self.api_port = free_port()
        self.process = None

    def start(self):
        env = dict(
            os.environ, SMTP_POLICY_FILE=str(self.policy_file), SMTP_POLICY_STATE=str(self.state_file),
            SMTP_POLICY_AUDIT_LOG=str(self.audit_log),
        )
        for name in ("SMTP_POLICY_TOKEN", "SMTP_POLICY_READ_TOKEN", "SMTP_POLICY_LOOPBACK_DEV"):
            env.pop(name, None)
        if self.token:
            env["SMTP_POLICY_TOKEN"] = self.token
        else:
            # No token: the explicit development mode (loopback clients only).
            env["SMTP_POLICY_LOOPBACK_DEV"] = "1"
        env["SMTP_POLICY_BUNDLES"] = "auto" if self.bundles else "off"
        env.update(self.env)
        if self.audit_seconds is not None:
            env["SMTP_POLICY_AUDIT_SECONDS"] = str(self.audit_seconds)
        if self.tls:
            key, cert, ca = self.tls
            listen = ["--ofp-ssl-listen-port", str(self.of_port), "--ctl-privkey", str(key), "--ctl-cert", str(cert),
                      "--ca-certs", str(ca)]
        else:
            listen = ["--ofp-tcp-listen-port", str(self.of_port)]
        command = [
            str(self.program), "--ofp-listen-host", "127.0.0.1", *listen,
            "--wsapi-host", "127.0.0.1", "--wsapi-port", str(self.api_port), *self.trailing,
        ]
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        remember_pid(self.process.pid)
        self._wait_listening(self.of_port)
        self._wait_listening(self.api_port)
        return self

    def _wait_listening(self, port, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.program.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.program.name} did not listen on port {port} within {timeout}s")

    def api(self, method, path, body=None, token=None, headers=None, timeout=60):
        """Call the REST API; returns (status, parsed JSON or None)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=timeout)
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if method != "GET":
            headers.setdefault("Content-Type", "application/json")
        token = self.token if token is None else token
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        return response.status, (json.loads(data) if data else None)

    def stop(self, sig=signal.SIGTERM):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process:
            forget_pid(self.process.pid)
        self.process = None

    def log(self):
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def metrics_text(self):
        """GET /metrics: the Prometheus text format."""
        connection = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=30)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
            return response.read().decode()
        finally:
            connection.close()

    def metrics(self):
        """{(name, frozenset(labels)): value} of GET /metrics, parsed by prometheus_client."""
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(self.metrics_text()) for sample in family.samples}

    def installs(self, dpid):
        return sum(1 for m in INSTALLED.finditer(self.log()) if int(m.group(1), 16) == dpid)

    def wait_installs(self, want, timeout=30.0):
        """Wait until each dpid in `want` (dpid -> count) logged that many installs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.installs(dpid) >= count for dpid, count in want.items()):
                return
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"{self.program.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"switches {want} not installed within {timeout}s:\n{self.log()[-3000:]}")

    def openflow_errors(self):
        return [line for line in self.log().splitlines() if OPENFLOW_ERROR in line]


@dataclass(frozen=True)
class Probe:
    client: str
    dst: str  # a host name or an address
    port: int
    family: int = 4
    proto: str = "tcp"
    src: str = None  # a source address to bind (forged sources)

    def describe(self):
        via = f" (as {self.src})" if self.src else ""
        return f"{self.client}{via} -> {self.dst}:{self.port}/{self.proto} IPv{self.family}"


class Lab:
    """The campus network under a live controller."""

    def __init__(self, policy_file, workdir, verbose=False, token=None, bundles=True, mail=False, env=None):
        self.mail = mail  # run the SMTP servers of campus.MAIL_SERVERS on port 25
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.controller = Controller(policy_file, self.workdir / "ryu-manager.log", token=token, bundles=bundles,
                                     env=env)
        self.net = None
        self.verbose = verbose
        self.listeners = []

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        setLogLevel("info" if self.verbose else "warning")
        self.controller.start()
        switch = partial(OVSSwitch, datapath="user", protocols="OpenFlow13", failMode="secure")
        self.net = Mininet(
            topo=campus.CampusTopo(),
            switch=switch,
            controller=partial(RemoteController, ip="127.0.0.1", port=self.controller.of_port),
            host=campus.CampusHost,
            autoSetMacs=True,
            waitConnected=False,
            build=False,  # assign first, so that stop() also undoes a build cut short
        )
        self.net.build()
        self.net.start()
        self.controller.wait_installs({dpid: 1 for dpid in self.dpids()})
        for name in campus.HOST_ADDRESSES:
            has_mail = self.mail and name in campus.MAIL_SERVERS
            tcp = [p for p in LISTEN_PORTS if not (has_mail and p == 25)]
            listener = self.host(name).popen(
                ["python3", str(PROBE), "listen", "--tcp", *map(str, tcp), "--udp", *map(str, LISTEN_PORTS)]
            )
            self.listeners.append(listener)
            if has_mail:
                self.listeners.append(self._start_mail_server(name))
        self._wait_listeners()
        for host, addresses in campus.SOURCES.values():
            for family, address in addresses.items():
                self.add_address(host, address, family)

    def stop(self):
        """Stop everything, even after an interrupted command; a second Ctrl-C
        while cleaning up is ignored so that nothing is left half-stopped."""
        with _signals_ignored():
            try:
                # Processes started with popen live outside the hosts' shells;
                # Mininet would leave them (and their namespaces) behind.
                for listener in self.listeners:
                    listener.kill()
                    listener.wait()
                self.listeners = []
                if self.net is not None:
                    try:
                        self.net.stop()
                    except Exception as err:  # e.g. a host shell interrupted mid-command
                        print(f"lab: Mininet did not stop cleanly ({err!r}); cleaning up like mn -c", file=sys.stderr)
                        cleanup_leftovers()
            finally:
                self.net = None
                self.controller.stop()

    def _start_mail_server(self, name):
        config = campus.MAIL_SERVERS[name]
        command = [sys.executable, str(MAILSERVER), "--name", name, "--maildir", str(self.maildir(name)),
                   "--max-size", str(config["max_size"])]
        for domain in config["domains"]:
            command += ["--domain", domain]
        for network in config.get("relay_for", []):
            command += ["--relay-for", network]
        for domain, address in config.get("routes", {}).items():
            command += ["--route", f"{domain}={address}"]
        log = open(self.workdir / f"mail-{name}.txt", "ab")
        try:
            return self.host(name).popen(command, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def maildir(self, name):
        return self.workdir / "maildir" / name

    def send_mail(self, client, server, mail_from, rcpt, subject, size=0, timeout=3.0):
        """Send one message from a host with smtplib; returns sendmail.py's verdict."""
        command = [sys.executable, str(SENDMAIL), self.address(server, 4), "--from", mail_from, "--to", rcpt,
                   "--subject", subject, "--size", str(size), "--timeout", str(timeout)]
        process = self.host(client).popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=300)
        try:
            return json.loads(out)
        except ValueError:
            return {"outcome": "error", "detail": (out + err).decode(errors="replace")[-500:]}

    def received(self, host, message_id, timeout=20.0):
        """The message with this Message-ID once it is in host's maildir, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in sorted(self.maildir(host).glob("*.eml")):
                with open(path, "rb") as stream:
                    message = email.message_from_binary_file(stream, policy=email.policy.default)
                if message["Message-ID"] == message_id:
                    return message, path.stat().st_size
            time.sleep(0.2)
        return None

    def dpids(self):
        return [int(switch.dpid, 16) for switch in self.net.switches]

    def host(self, name):
        return self.net.get(name)

    def address(self, name_or_address, family):
        if name_or_address in campus.HOST_ADDRESSES:
            ip4, ip6, _ = campus.HOST_ADDRESSES[name_or_address]
            return ip4 if family == 4 else ip6
        return name_or_address

    def _wait_listeners(self, timeout=10.0):
        # Each host's listener must answer on loopback before any probe counts.
        deadline = time.monotonic() + timeout
        pending = set(campus.HOST_ADDRESSES)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                out = self.host(name).cmd(f"python3 {PROBE} tcp 127.0.0.1 25 --timeout 1")
                if out.strip() == "open":
                    pending.discard(name)
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"listeners did not start on {sorted(pending)}")

    def run_probes(self, probes, timeout=2.0):
        """Run probes concurrently; returns {probe: 'open'|'timeout'|...}."""
        running = {}
        for p in probes:
            command = ["python3", str(PROBE), p.proto, self.address(p.dst, p.family), str(p.port), "--timeout", str(timeout)]
            if p.src:
                command += ["--src", p.src]
            running[p] = self.host(p.client).popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        results = {}
        for p, proc in running.items():
            out, _ = proc.communicate(timeout=timeout + 10)
            results[p] = out.decode(errors="replace").strip() or f"error:exit {proc.returncode}"
        return results

    def craft(self, sends, watch, seconds=6.0):
        """Send crafted frames (mininet/craft.py) and see what arrives where.

        `sends` maps a client host to its cases; every host in `watch`
        records the IP frames on its interface while they are sent. Returns
        {host: [frame descriptions]}."""
        watchers = {}
        try:
            for name in watch:
                command = [sys.executable, str(CRAFT), "watch", "--iface", str(self.host(name).defaultIntf()),
                           "--seconds", str(seconds)]
                watchers[name] = self.host(name).popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name, process in watchers.items():  # each must be capturing before anything is sent
                line = process.stdout.readline()
                if b"ready" not in line:
                    raise RuntimeError(f"craft watcher on {name} did not start: {line!r} {process.stderr.read()!r}")
            senders = []
            for name, cases in sends.items():
                path = self.workdir / f"craft-{name}.json"
                path.write_text(json.dumps(cases))
                command = [sys.executable, str(CRAFT), "send", "--iface", str(self.host(name).defaultIntf()), str(path)]
                senders.append(self.host(name).popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            for sender in senders:
                out, _ = sender.communicate(timeout=60)
                if sender.returncode:
                    raise RuntimeError(f"craft send failed: {out.decode(errors='replace')[-2000:]}")
            return {name: [json.loads(line) for line in process.communicate(timeout=seconds + 30)[0].splitlines()]
                    for name, process in watchers.items()}
        finally:
            for process in watchers.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()

    def start_probe_loop(self, client, dst, port, seconds, family=4, limit=500):
        """A bounded loop of TCP probes on a host, in the background; its
        output, once it ends, is one outcome word per probe."""
        probe = f"python3 {PROBE} tcp {self.address(dst, family)} {port} --timeout 0.5"
        script = (
            f"end=$((SECONDS+{int(seconds)})); n=0; "
            f"while [ $SECONDS -lt $end ] && [ $n -lt {limit} ]; do {probe}; n=$((n+1)); sleep 0.05; done"
        )
        return self.host(client).popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def start_stream(self, client, dst, port, seconds, family=4):
        """One long TCP connection sending steadily, in the background."""
        command = ["python3", str(PROBE), "stream", self.address(dst, family), str(port), "--seconds", str(seconds)]
        return self.host(client).popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    @contextlib.contextmanager
    def cut_off(self, switch="s1"):
        """The switch loses its controller connection but keeps its flows.

        Not with `ovs-vsctl del-controller`: Open vSwitch flushes a bridge's
        flows when it goes from having a controller to having none. The
        switch is pointed at a port where nothing listens instead."""
        target = subprocess.run(["ovs-vsctl", "get-controller", switch], capture_output=True, text=True,
                                check=True).stdout.split()
        subprocess.run(["ovs-vsctl", "set-controller", switch, f"tcp:127.0.0.1:{free_port()}"], check=True)
        try:
            yield
        finally:
            subprocess.run(["ovs-vsctl", "set-controller", switch, *target], check=True)

    def ofctl(self, *args):
        return subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True, check=True
        ).stdout

    def add_address(self, host, address, family):
        """An extra address that the host answers for but never picks as a
        source by itself: a host-length prefix adds no subnet route (IPv4), and
        a deprecated address loses IPv6 source selection (RFC 6724 rule 3)."""
        length = 32 if family == 4 else 128
        intf = self.host(host).defaultIntf()
        flag = "-6 " if family == 6 else ""
        extra = " nodad preferred_lft 0" if family == 6 else ""
        self.host(host).cmd(f"ip {flag}addr add {address}/{length} dev {intf}{extra}")


@contextlib.contextmanager
def _signals_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def cleanup_leftovers():
    """Last resort after a crash: what `mn -c` does, quietly."""
    setLogLevel("error")
    mininet_cleanup()
