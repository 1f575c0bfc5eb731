"""Stock ryu-manager, as an operator runs it: a bad policy stops it with one line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

RYU_MANAGER = Path(sys.executable).parent / "ryu-manager"


def run_ryu_manager(policy_file, cwd, timeout=30):
    env = dict(os.environ, SMTP_POLICY_FILE=str(policy_file))
    return subprocess.run(
        [str(RYU_MANAGER), "--ofp-tcp-listen-port", "0", "ryu_apps.smtp_policy"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


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
def test_bad_policy_stops_ryu_manager_with_one_line(tmp_path, content, message):
    (tmp_path / "policy.yaml").write_text(content)
    result = run_ryu_manager("policy.yaml", tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1] == message


def test_missing_policy_file_defaults_to_policy_yaml_in_cwd(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SMTP_POLICY_FILE"}
    result = subprocess.run(
        [str(RYU_MANAGER), "ryu_apps.smtp_policy"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "smtp-border: policy.yaml: cannot read policy file: No such file or directory"
    )
