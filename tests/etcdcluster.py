"""A real etcd cluster on loopback for the tests (Debian's etcd-server 3.4):
members started and stopped by pid, data under the test's directory,
nothing left behind, even on failure."""
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdCluster:
    def __init__(self, directory, size=3):
        self.directory = Path(directory)
        self.names = [f"m{i}" for i in range(size)]
        self.peer = {name: free_port() for name in self.names}
        self.client = {name: free_port() for name in self.names}
        self.processes = {}
        self.token = f"smtp-border-test-{os.getpid()}-{free_port()}"

    @property
    def endpoints(self):
        return ",".join(f"http://127.0.0.1:{self.client[n]}" for n in self.names)

    def __enter__(self):
        try:
            for name in self.names:
                self.start(name, new=True)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, name, new=False):
        cluster = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        command = [
            ETCD, "--name", name, "--data-dir", str(self.directory / name),
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
            "--listen-client-urls", f"http://127.0.0.1:{self.client[name]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client[name]}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new" if new else "existing",
            "--initial-cluster-token", self.token,
            # Loopback: elections in a fraction of a second, as the tests measure failover.
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        log = open(self.directory / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        log.close()

    def kill(self, name, sig=signal.SIGKILL):
        """Stop one member (SIGKILL: at once; etcd's SIGTERM can linger without quorum)."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, sig)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def close(self):
        for name in list(self.processes):
            self.kill(name)

    def healthy(self, name):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client[name]}/health", timeout=1) as answer:
                return b'"health":"true"' in answer.read()
        except OSError:
            return False

    def wait_healthy(self, names=None, timeout=20.0):
        deadline = time.monotonic() + timeout
        names = names or list(self.processes)
        while time.monotonic() < deadline:
            if all(self.healthy(n) for n in names):
                return
            for name in names:
                process = self.processes.get(name)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"etcd {name} exited: {(self.directory / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"etcd members {names} not healthy within {timeout} s")
