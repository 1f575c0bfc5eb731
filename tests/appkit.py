"""The real app against fake switches (tests/fakeswitch.py), for the unit
tests of delivery and of the agents: the app made with its own Timing and
Limits (never patched constants), and helpers to let its green threads run."""
import shutil
import textwrap
import time
from pathlib import Path

from fakeswitch import FakeSwitch
from ryu_apps import smtp_policy
from ryu_apps.agent import Timing
from ryu_apps.channel import Limits
from ryu_apps.framework import hub
from smtp_border.compiler import compile_switch

ROOT = Path(__file__).resolve().parent.parent

H1_OUT = {"address": "10.20.3.10", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "test"}


def make_app_fixture(tmp_path, monkeypatch):
    apps = []

    def make(policy_text=None, audit_seconds=0.05, bundles="auto", expiry_seconds=3600, echo_timeout=3.0, limits=None, **timing):
        limits = dict({"reply_timeout": 0.2, "echo_timeout": echo_timeout}, **(limits or {}))
        policy = tmp_path / "policy.yaml"
        if policy_text is None:
            shutil.copy(ROOT / "policy.yaml", policy)
        else:
            policy.write_text(textwrap.dedent(policy_text))
        monkeypatch.setenv("SMTP_POLICY_FILE", str(policy))
        monkeypatch.setenv("SMTP_POLICY_STATE", str(tmp_path / "state.json"))
        monkeypatch.setenv("SMTP_POLICY_AUDIT_LOG", str(tmp_path / "blocked.jsonl"))
        monkeypatch.setenv("SMTP_POLICY_AUDIT_SECONDS", str(audit_seconds))
        monkeypatch.setenv("SMTP_POLICY_BUNDLES", bundles)
        app = smtp_policy.SmtpPolicy(timing=Timing(**dict({"audit_seconds": audit_seconds, "retry_min": 0.01}, **timing)),
                                     limits=Limits(**limits),
                                     expiry_seconds=expiry_seconds)
        apps.append(app)
        return app

    yield make
    for app in apps:  # end the workers: their switches go away
        for switch in list(app.switches.values()):
            switch.dp.disconnect()


def settle(app, until=None, timeout=3.0):
    """Let the app's green threads run until every switch is in sync (or `until()`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hub.sleep(0.01)
        if until() if until else all(s.in_sync for s in app.switches.values()):
            return True
    return False


def desired(app, dpid=1):
    return set(compile_switch(app.policy, dpid))


def connect(app, dpid=1, **kwargs):
    switch = FakeSwitch(dpid, **kwargs)
    switch.connect(app)
    assert settle(app)
    return switch


