"""The smtp-border command: offline commands on files, and the API commands
against a live ryu-manager (no switches needed)."""
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from lab import Controller
from smtp_border.compiler import compile_switch
from smtp_border.pipeline import Profile
from smtp_border.policy import load_policy
from smtp_border.rules import sorted_rules, to_ofctl

CLI = str(Path(sys.executable).parent / "smtp-border")
TOKEN = "cli-test-token"


def run(*args, env=None):
    result = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=env)
    return result.returncode, result.stdout, result.stderr


def test_check_good_and_bad(tmp_path):
    assert run("check", str(ROOT / "policy.yaml"))[0:2] == (
        0, f"{ROOT / 'policy.yaml'}: OK: 2 campus prefix(es), 1 gateway(s), 4 exception(s), enforced on 1 switch(es)\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("campus: {prefixes: [10.20.0.0/16]}\nsmtp_ports: [25, 99999]\n")
    assert run("check", str(bad)) == (1, "", f"smtp-border: {bad}: smtp_ports[1]: 99999 is not a TCP port (1-65535)\n")
    assert run("check", str(tmp_path / "missing.yaml"))[2] == (
        f"smtp-border: {tmp_path / 'missing.yaml'}: cannot read policy file: No such file or directory\n"
    )


def test_flows_prints_what_the_policy_compiles_to():
    code, out, _ = run("flows", str(ROOT / "policy.yaml"))
    assert code == 0
    expected = [to_ofctl(r) for r in sorted_rules(compile_switch(load_policy(ROOT / "policy.yaml"), 1))]
    lines = out.splitlines()
    assert lines[0] == f"# dpid 0000000000000001 (border): {len(expected)} flows, multi_table"
    assert [line.strip() for line in lines[1:]] == expected
    in_table_1 = sum(",table=1," in line for line in expected)
    assert run("flows", str(ROOT / "policy.yaml"), "--count")[1] == (
        f"dpid 0000000000000001 (border): {len(expected)} flows, multi_table; {in_table_1} entries in table 1, no budget"
        " known (the switch tells it when it connects; switches[].table_size sets it)\n")
    assert run("flows", str(ROOT / "policy.yaml"), "--dpid", "0x2", "--count")[1].startswith(
        "dpid 0000000000000002 (inside switch): 2 flows, multi_table; 0 entries in table 1")
    code, out, err = run("flows", str(ROOT / "policy.yaml"), "--count", "--table-size", "16")
    assert code == 0 and f"budget 16 (--table-size), headroom {16 - in_table_1}" in out and err == ""
    # One table: every flow counts, and 16 is too few (a warning, not an error: this is a preview).
    single = [to_ofctl(r) for r in sorted_rules(
        Profile.named("single_table").compile(load_policy(ROOT / "policy.yaml"), 1))]
    code, out, err = run("flows", str(ROOT / "policy.yaml"), "--count", "--table-size", "16", "--pipeline", "single_table")
    assert code == 0 and f"{len(single)} entries in table 0, budget 16 (--table-size), headroom {16 - len(single)}" in out
    assert err == (f"smtp-border: warning: dpid 0000000000000001 (border) needs {len(single)} entries in table 0, more"
                   " than its budget 16 (--table-size)\n")


@pytest.mark.parametrize("command", [[], ["check"], ["flows"], ["exceptions"], ["exceptions", "add"], ["exceptions", "rm"],
                                     ["exceptions", "list"], ["reload"], ["blocked"], ["top"], ["mailservers"]])
def test_help_on_every_command(command):
    code, out, _ = run(*command, "--help")
    assert code == 0 and out.startswith("usage: smtp-border")


def test_the_version_is_one_number_everywhere():
    from smtp_border.version import version

    code, out, _ = run("--version")
    assert code == 0 and out.startswith(f"smtp-border {version()} (Python ") and version() != "unknown"


def test_usage_errors_are_one_line_and_non_zero():
    code, _, err = run("exceptions", "add", "10.20.3.10", "--direction", "sideways", "--reason", "x")
    assert code == 2 and "invalid choice: 'sideways'" in err
    code, _, err = run("--url", "http://127.0.0.1:9", "exceptions", "list")
    assert (code, err.count("\n")) == (1, 1) and err.startswith("smtp-border: cannot reach the controller at http://127.0.0.1:9")


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    policy = directory / "policy.yaml"
    shutil.copy(ROOT / "policy.yaml", policy)
    running = Controller(policy, directory / "ryu-manager.txt", token=TOKEN).start()
    try:
        yield running
    finally:
        running.stop()


def api_env(controller, token=TOKEN):
    env = dict(os.environ, SMTP_BORDER_URL=f"http://127.0.0.1:{controller.api_port}")
    env.pop("SMTP_POLICY_TOKEN", None)
    if token:
        env["SMTP_POLICY_TOKEN"] = token
    return env


def test_exceptions_add_list_rm(controller):
    env = api_env(controller)
    code, out, err = run("exceptions", "add", "10.20.3.10", "--direction", "outbound", "--reason", "big files",
                         "--contact", "ops@example.edu", "--expires", "2031-01-01T00:00:00Z", env=env)
    # Part 2 is granted on grounds (the relay's message size limit): refused without, and nothing changed.
    # Errors name the CLI's flags, not the API's fields.
    assert code == 1 and out == "" and err.startswith(
        "smtp-border: POST /smtp/v1/exceptions: 400: --grounds: a Part 2 (outbound) exception needs grounds;")
    assert "--needs-message-size (e.g. 200MB)" in err
    assert "ITS will grant exceptions to Part 2 for the following reason(s)" in err
    code, out, err = run("exceptions", "add", "10.20.3.10", "--direction", "outbound", "--reason", "big files",
                         "--needs-message-size", "20MB", env=env)
    assert code == 1 and "--needs-message-size: 20MB is within the relay's limit (50MB" in err
    # A size needs a unit: 200 would be 200 bytes.
    code, out, err = run("exceptions", "add", "10.20.3.10", "--direction", "outbound", "--reason", "big files",
                         "--needs-message-size", "200", env=env)
    assert code == 2 and "'200' needs a unit: 200MB, 200MiB or 200GB" in err
    code, out, err = run("exceptions", "add", "10.20.3.10", "--direction", "outbound", "--reason", "big files",
                         "--contact", "ops@example.edu", "--expires", "2031-01-01T00:00:00Z",
                         "--needs-message-size", "200MB", env=env)
    # No switch is connected here: the border switch the policy lists is pending, the CLI says so, and
    # exits 3 (saved, pending) so that a script tells it from enforced (0).
    assert code == 3, err
    exception_id = out.split()[1].rstrip(":")
    assert out == (f"added {exception_id}: 10.20.3.10/32 outbound\n"
                   "in force on: no switch\nPENDING on 0000000000000001 (border): not connected\n")
    code, out, _ = run("exceptions", "list", env=env)
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "ADDRESS", "DIRECTION", "SOURCE", "STATE", "EXPIRES", "CONTACT", "BY", "REASON"]
    mine = [r for r in rows if r.startswith(exception_id)]
    assert len(mine) == 1 and "api" in mine[0] and "2031-01-01T00:00:00Z" in mine[0] and "big files" in mine[0]
    assert " admin " in mine[0]  # who granted it: the single token is the client admin
    assert len(rows) == 5
    assert run("exceptions", "add", "10.20.3.10", "--direction", "inbound", "--reason", "x", env=env) == (
        1, "", f"smtp-border: POST /smtp/v1/exceptions: 409: an exception for 10.20.3.10/32 already exists (id {exception_id})\n"
    )
    assert run("exceptions", "rm", exception_id, env=api_env(controller, token="wrong"))[0:1] == (1,)
    refused = run("exceptions", "rm", exception_id, env=api_env(controller, token="wrong"))[2]
    assert "401" in refused and "give a token with --token, or set SMTP_POLICY_TOKEN" in refused
    assert run("exceptions", "rm", exception_id, env=env) == (
        3, f"removed {exception_id}\nin force on: no switch\nPENDING on 0000000000000001 (border): not connected\n", "")
    assert run("exceptions", "rm", exception_id, env=env)[2] == (
        f"smtp-border: DELETE /smtp/v1/exceptions/{exception_id}: 404: no exception with id '{exception_id}'\n"
    )


def test_reload_good_and_bad(controller):
    env = api_env(controller)
    shipped = (ROOT / "policy.yaml").read_text()
    controller.policy_file.write_text(shipped.replace("exceptions:\n", "exceptions:\n  - {address: 10.20.3.11, direction: both, reason: r}\n", 1))
    code, out, err = run("reload", env=env)
    assert code == 3, err  # saved; pending on the listed switch, which is not connected
    assert out.startswith("added   ") and "10.20.3.11/32 both" in out
    controller.policy_file.write_text(shipped.replace("smtp_ports: [25]", "smtp_ports: [0]"))
    code, out, err = run("reload", env=env)
    assert code == 1 and err == f"smtp-border: POST /smtp/v1/reload: 400: {controller.policy_file}: smtp_ports[0]: 0 is not a TCP port (1-65535)\n"
    controller.policy_file.write_text(shipped)
    code, out, _ = run("reload", env=env)
    assert code == 3 and out.startswith("removed ")


def test_read_only_commands(controller):
    # Who was blocked is for those with a token; the rest is open.
    for command in (["blocked"], ["top"]):
        code, out, err = run(*command, env=api_env(controller, token=None))
        assert code == 1 and "401: a valid 'Authorization: Bearer <token>' header is required" in err
        assert "give a token with --token" in err
    env = api_env(controller)
    code, out, _ = run("blocked", env=env)
    assert code == 0 and out == "no blocked attempt recorded\n"  # empty results say so
    code, out, _ = run("top", "--window", "7d", env=env)
    assert code == 0 and "campus hosts that tried to send mail directly (Part 2):" in out
    code, out, err = run("top", "--window", "soon", env=env)
    assert code == 1 and "window: 'soon' is not a duration" in err
    code, out, _ = run("mailservers", env=api_env(controller, token=None))
    assert code == 0 and "smtp-relay  10.20.0.25/32, fd00:20::25/128" in out
    assert "10.20.1.5/32" in out and "postmaster@physics.example.edu" in out
    code, out, _ = run("--json", "mailservers", env=env)
    assert code == 0 and '"summary"' in out


def test_grants_the_relay_now_carries_are_reported_and_expiring_ones_listed(controller, tmp_path):
    """Raise the relay's limit past what the file's two Part 2 grants need:
    the reload answer, the inventory and /metrics report them for review;
    a grant expiring in ten days is what --expiring lists."""
    env = api_env(controller)
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, err = run("exceptions", "add", "10.20.3.12", "--direction", "inbound", "--reason", "trial mail system",
                         "--contact", "trial@example.edu", "--expires", soon, env=env)
    assert code == 3, err  # no switch connected: saved, pending
    added = out.split()[1].rstrip(":")
    shipped = (ROOT / "policy.yaml").read_text()
    try:
        controller.policy_file.write_text(shipped.replace("max_message_size: 50MB", "max_message_size: 250MB"))
        code, out, err = run("reload", env=env)
        assert code == 3, err
        review = [line for line in out.splitlines() if line.startswith("REVIEW")]
        assert len(review) == 2 and all("the relay now carries messages up to 250MB; this grant needs 200MB" in line
                                        and "imaging-it@example.edu" in line for line in review)
        code, out, _ = run("mailservers", env=env)
        assert "messages up to 250MB" in out
        assert [line.split()[0] for line in out.splitlines() if " REVIEW " in line] == ["10.20.2.50/32", "fd00:20:0:2::50/128"]
        values = unlabelled(controller.metrics())
        assert values["smtp_border_exceptions_for_review"] == 2 and values["smtp_border_exceptions_lapsed"] == 0
        code, out, _ = run("mailservers", "--expiring", env=env)
        rows = out.splitlines()[1:]
        assert len(rows) == 1 and rows[0].startswith("10.20.3.12/32") and "expires soon" in rows[0]
        assert values["smtp_border_exceptions_expiring_soon"] == 1
        # The twin: the same, with the relay at 50 MB again, has nothing for review.
        controller.policy_file.write_text(shipped)
        code, out, _ = run("reload", env=env)
        assert code == 3 and "REVIEW" not in out
        assert unlabelled(controller.metrics())["smtp_border_exceptions_for_review"] == 0
        assert "REVIEW" not in run("mailservers", env=env)[1]
    finally:
        controller.policy_file.write_text(shipped)
        run("reload", env=env)
        run("exceptions", "rm", added, env=env)


def test_the_url_and_token_come_from_the_env_file_not_the_shell(controller, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SMTP_BORDER_URL", "SMTP_POLICY_TOKEN",
                                                            "SMTP_POLICY_READ_TOKEN", "SMTP_BORDER_ENV_FILE")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    (tmp_path / "smtp-border").mkdir()
    settings = tmp_path / "smtp-border" / "env"
    settings.write_text(f"# written by the operator\nSMTP_BORDER_URL=http://127.0.0.1:{controller.api_port}\n"
                        f"export SMTP_POLICY_TOKEN='{TOKEN}'\n")
    settings.chmod(0o600)
    code, out, err = run("blocked", env=env)  # needs the token
    assert code == 0 and out == "no blocked attempt recorded\n", err
    # The shell's setting wins over the file; the option over both.
    assert "401" in run("blocked", env=dict(env, SMTP_POLICY_TOKEN="wrong"))[2]
    assert run("--token", TOKEN, "blocked", env=dict(env, SMTP_POLICY_TOKEN="wrong"))[0] == 0
    # A token others may read is refused, naming the fix; so is a line that is not KEY=VALUE.
    settings.chmod(0o644)
    assert run("blocked", env=env) == (
        1, "", f"smtp-border: {settings} holds a token and others may read it (mode 644): chmod 600 {settings}\n")
    settings.chmod(0o640)  # its group may read it (the service's /etc/smtp-border/env is so)
    assert run("blocked", env=env)[0] == 0
    settings.chmod(0o600)
    with settings.open("a") as stream:
        stream.write("SMTP_BORDER_URL http://nowhere\n")
    assert run("blocked", env=env) == (1, "", f"smtp-border: {settings}:4: expected KEY=VALUE (one value; quote it"
                                               " if it has spaces)\n")
    # Another file, named in the environment (as the systemd unit's EnvironmentFile can be).
    other = tmp_path / "ops.env"
    other.write_text(f"SMTP_BORDER_URL=http://127.0.0.1:{controller.api_port}\n")
    assert run("mailservers", env=dict(env, SMTP_BORDER_ENV_FILE=str(other)))[0] == 0
    assert run("mailservers", env=dict(env, SMTP_BORDER_ENV_FILE=str(tmp_path / "missing")))[2] == (
        f"smtp-border: {tmp_path / 'missing'}: no such file\n")


def unlabelled(values):
    return {name: value for (name, labels), value in values.items() if not labels}


def test_named_clients_and_the_history_of_who_changed_what(tmp_path):
    """Issue 24: a tokens file with a write client and a read client; what
    each may do, and `smtp-border history` naming who did what, from where."""
    policy = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "policy.yaml", policy)
    tokens = {}
    lines = []
    for name, scope in (("alice", "write"), ("grafana", "read")):
        code, out, _ = run("token", "new", name, "--scope", scope)
        assert code == 0
        tokens[name] = out.splitlines()[1].strip()
        lines.append(out.splitlines()[3].strip())
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n".join(lines) + "\n")
    tokens_file.chmod(0o640)
    running = Controller(policy, tmp_path / "ryu-manager.txt", env={"SMTP_POLICY_TOKENS_FILE": str(tokens_file)})
    running.start()
    try:
        def as_(name):
            env = dict(os.environ, SMTP_BORDER_URL=f"http://127.0.0.1:{running.api_port}", SMTP_POLICY_TOKEN=tokens[name])
            env.pop("SMTP_POLICY_READ_TOKEN", None)
            return env

        code, out, err = run("exceptions", "add", "10.20.3.10", "--direction", "inbound", "--reason", "lab mail server",
                             env=as_("alice"))
        assert code == 3, err  # saved; pending (no switch connected)
        added = out.split()[1].rstrip(":")
        code, _, err = run("exceptions", "rm", added, env=as_("grafana"))
        assert code == 1 and "403: client 'grafana' may read, not change" in err
        code, out, err = run("history", env=as_("grafana"))
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split()[:4] == ["TIME", "(UTC)", "CLIENT", "FROM"]
        assert len(rows) == 1 and " alice " in rows[0] and " 127.0.0.1 " in rows[0] and "+10.20.3.10/32 inbound" in rows[0]
        assert "REFUSED, nothing changed" not in running.log()  # a 403 is not a change attempt
        assert "by alice from 127.0.0.1 (add): added 10.20.3.10/32 inbound" in running.log()
        code, out, _ = run("--json", "exceptions", "list", env=as_("grafana"))
        (mine,) = [e for e in json.loads(out)["exceptions"] if e["id"] == added]
        assert mine["created_by"] == "alice" and mine["created_at"].endswith("Z")
        code, out, _ = run("history", "--since", "2999-01-01T00:00:00Z", env=as_("grafana"))
        assert code == 0 and out == "no change recorded since 2999-01-01T00:00:00Z\n"
        # A tokens file others may read: the controller refuses to start, naming the fix.
        tokens_file.chmod(0o644)
        refused = Controller(policy, tmp_path / "refused.txt", env={"SMTP_POLICY_TOKENS_FILE": str(tokens_file)})
        with pytest.raises(RuntimeError, match="others may read it"):
            refused.start()
    finally:
        running.stop()


def test_state_check_and_repair_a_journal_the_controller_refuses(tmp_path):
    """A corrupted line in the middle of the journal: the controller refuses
    to start, naming the two commands; they find and set it aside."""
    journal = tmp_path / "api-exceptions.json"
    header = json.dumps({"format": "smtp-border-api-exceptions", "version": 2})
    good = [json.dumps({"remove": [], "add": [{"address": f"10.20.3.{i}/32", "direction": "inbound", "reason": "r"}]})
            for i in (10, 11)]
    journal.write_text("\n".join([header, good[0], '{"remove": [], "add": [{"addr', good[1]]) + "\n")
    code, out, err = run("state", "check", str(journal))
    assert code == 1 and f"{journal}:3: not valid JSON" in out and "state repair" in err
    code, out, err = run("state", "repair", str(journal))
    assert code == 0 and "kept 2 change line(s), set aside 1" in out, err
    assert run("state", "check", str(journal))[:2] == (0, f"{journal}: OK: every line reads\n")
    assert len(list(tmp_path.glob("api-exceptions.json.bak-*"))) == 1
    assert len(list(tmp_path.glob("api-exceptions.json.dropped-*"))) == 1
