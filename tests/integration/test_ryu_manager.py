"""The two ways an operator starts the controller: stock `ryu-manager
ryu_apps.smtp_policy` (Ryu) and `smtp-border-controller` (Ryu or os-ken,
ryu_apps/launcher.py). A bad policy stops either with one line; the
launcher takes the options operators use and says what it runs on."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from lab import free_port

BIN = Path(sys.executable).parent
RYU_MANAGER = BIN / "ryu-manager"
LAUNCHER = BIN / "smtp-border-controller"
# Each way that is installed here: ryu-manager only with Ryu.
LAUNCHERS = [pytest.param([str(LAUNCHER)], id="smtp-border-controller")] + (
    [pytest.param([str(RYU_MANAGER), "ryu_apps.smtp_policy"], id="ryu-manager")] if RYU_MANAGER.exists() else [])


def run_controller(launcher, policy_file, cwd, timeout=30, env=None):
    env = dict(os.environ if env is None else env, SMTP_POLICY_FILE=str(policy_file))
    return subprocess.run(
        [launcher[0], "--ofp-tcp-listen-port", "0", *launcher[1:]],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize(
    "content, message",
    [
        (
            "campus: {prefixes: [10.20.0.0/16]}\nexceptions:\n"
            "  - {address: 10.20.1.5, direction: inbound, reason: a}\n"
            "  - {address: 10.20.1.6, direction: both, reason: b}\n"
            "  - {address: 10.20.3.300, direction: inbound, reason: c}\n",
            "smtp-border: policy.yaml: exceptions[2].address: '10.20.3.300' is not an IP address or network",
        ),
        ("campus: {prefixes: [10.20.0.0/16]}\nswitchs: []\n",
         "smtp-border: policy.yaml: switchs: unknown key 'switchs'; did you mean 'switches'?"),
        ("campus: [\n", "smtp-border: policy.yaml: line 2, column 1: YAML syntax error: did not find expected node content"),
    ],
)
def test_bad_policy_stops_the_controller_with_one_line(tmp_path, launcher, content, message):
    (tmp_path / "policy.yaml").write_text(content)
    result = run_controller(launcher, "policy.yaml", tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1] == message


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_missing_policy_file_defaults_to_policy_yaml_in_cwd(tmp_path, launcher):
    env = {k: v for k, v in os.environ.items() if k != "SMTP_POLICY_FILE"}
    result = subprocess.run(launcher, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "smtp-border: policy.yaml: cannot read policy file: No such file or directory"
    )


def test_the_launcher_names_its_framework_and_python():
    from ryu_apps import framework

    result = subprocess.run([str(LAUNCHER), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    said = result.stdout.strip().splitlines()[-1]
    assert said.startswith("smtp-border-controller ")
    assert f"({framework.NAME} {framework.VERSION}, Python {sys.version.split()[0]})" in said


def test_the_launcher_takes_the_operators_options(tmp_path):
    """--ofp-listen-host, --ofp-tcp-listen-port, --wsapi-host and --log-file
    on the command line, --wsapi-port from --config-file: the controller
    listens where told, logs where told, and its API answers (its twin: a
    port it was not told stays closed)."""
    of_port, api_port, other = free_port(), free_port(), free_port()
    config = tmp_path / "controller.conf"
    config.write_text(f"[DEFAULT]\nwsapi_port = {api_port}\n")
    log_file = tmp_path / "controller.log"
    env = dict(os.environ, SMTP_POLICY_FILE=str(ROOT / "policy.yaml"), SMTP_POLICY_STATE=str(tmp_path / "state.json"),
               SMTP_POLICY_AUDIT_LOG=str(tmp_path / "blocked.jsonl"))
    process = subprocess.Popen(
        [str(LAUNCHER), "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(of_port),
         "--wsapi-host", "127.0.0.1", "--config-file", str(config), "--log-file", str(log_file)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/smtp/v1/policy", timeout=5) as answer:
                    policy = json.load(answer)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the API did not answer"
                time.sleep(0.2)
        assert policy["campus"]
        import socket
        with socket.create_connection(("127.0.0.1", of_port), timeout=5):
            pass  # OpenFlow listens where told
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{other}/smtp/v1/policy", timeout=2)
        text = log_file.read_text()
        assert "smtp-border: policy" in text and f"REST API on http://127.0.0.1:{api_port}" in text
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_log_an_operator_reads(tmp_path, launcher):
    """Issue 24: no HTTP access lines in the controller's log by default
    (they go to a file of their own when asked), warnings summarised with the
    command that lists them, JSON lines when asked, SIGTERM said."""
    policy = tmp_path / "policy.yaml"
    many = "".join(f"  - {{address: 10.20.200.{i}, direction: outbound, reason: r{i}}}\n" for i in range(1, 13))
    policy.write_text((ROOT / "policy.yaml").read_text().replace("exceptions:\n", "exceptions:\n" + many, 1))
    for log_format in ("text", "json"):
        api_port = free_port()
        access = tmp_path / f"access-{log_format}.log"
        env = dict(os.environ, SMTP_POLICY_FILE=str(policy), SMTP_POLICY_STATE=str(tmp_path / "state.json"),
                   SMTP_POLICY_AUDIT_LOG=str(tmp_path / "blocked.jsonl"), SMTP_POLICY_LOG_FORMAT=log_format,
                   **({"SMTP_POLICY_ACCESS_LOG": str(access)} if log_format == "json" else {}))
        process = subprocess.Popen(
            [launcher[0], "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(free_port()),
             "--wsapi-host", "127.0.0.1", "--wsapi-port", str(api_port), *launcher[1:]],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    for _ in range(3):
                        urllib.request.urlopen(f"http://127.0.0.1:{api_port}/smtp/v1/policy", timeout=5).read()
                    break
                except OSError:
                    assert process.poll() is None and time.monotonic() < deadline
                    time.sleep(0.2)
        finally:
            process.terminate()
            out = process.communicate(timeout=20)[0].decode()
        lines = [line for line in out.splitlines() if "smtp-border" in line]
        if log_format == "json":
            entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            messages = [e["message"] for e in entries]
            assert entries and all(e["time"].endswith("Z") and e["level"] for e in entries)
            assert access.read_text().count("GET /smtp/v1/policy") == 3  # its own file, when asked
        else:
            messages = lines
        assert not any("GET /smtp/v1/policy" in m or "accepted (" in m for m in messages), messages
        grounds = [m for m in messages if "a Part 2 exception without grounds" in m]
        assert len(grounds) == 5, grounds  # the first few, then a count and the command
        assert any("12 warning(s) in all, 5 shown; `smtp-border check --warnings" in m for m in messages), messages
        assert any("SIGTERM received" in m for m in messages), messages[-5:]


def test_make_clean_stops_the_test_controllers_and_never_another(tmp_path):
    """Issue 24: `make clean` used to pkill every ryu-manager running the app,
    a production controller on the same host included. Now it stops what the
    tests started (pid files of mininet/lab.py) and nothing else."""
    from lab import PID_DIR, Controller

    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "policy.yaml").read_text())
    env = dict(os.environ, SMTP_POLICY_FILE=str(policy), SMTP_POLICY_STATE=str(tmp_path / "prod.json"),
               SMTP_POLICY_AUDIT_LOG=str(tmp_path / "prod.jsonl"), SMTP_POLICY_TRAIL=str(tmp_path / "prod.trail"))
    production = subprocess.Popen([str(LAUNCHER), "--ofp-tcp-listen-port", str(free_port()), "--wsapi-port",
                                   str(free_port())], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
    test_controller = Controller(policy, tmp_path / "test.txt").start()
    try:
        assert (PID_DIR / str(test_controller.process.pid)).exists()
        result = subprocess.run(["bash", str(ROOT / "scripts" / "clean.sh")], capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, SMTP_BORDER_CLEAN_MININET="0"))
        assert result.returncode == 0, result.stderr
        assert f"stopping test controller {test_controller.process.pid}" in result.stdout
        test_controller.process.wait(timeout=20)
        assert not (PID_DIR / str(test_controller.process.pid)).exists()
        time.sleep(0.5)
        assert production.poll() is None  # the one it did not start runs on
    finally:
        test_controller.stop()
        production.terminate()
        production.wait(timeout=20)


def test_a_corrupted_journal_stops_the_controller_naming_the_commands_that_fix_it(tmp_path):
    journal = tmp_path / "policy.api-exceptions.json"
    journal.write_text('{"format": "smtp-border-api-exceptions", "version": 2}\n{"remove": [], "add": [\n'
                       '{"remove": [], "add": []}\n')
    (tmp_path / "policy.yaml").write_text((ROOT / "policy.yaml").read_text())
    result = run_controller([str(LAUNCHER)], tmp_path / "policy.yaml", tmp_path,
                            env=dict(os.environ, SMTP_POLICY_STATE=str(journal)))
    assert result.returncode != 0
    said = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("smtp-border:")]
    assert any(f"smtp-border state check {journal}" in line and f"smtp-border state repair {journal}" in line
               for line in said), said
