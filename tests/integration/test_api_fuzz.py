"""The REST API fuzzed from docs/openapi.yaml with schemathesis against a live
ryu-manager: no 5xx and no traceback, whatever the request; requests without
the token change nothing; the state stays consistent."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from lab import Controller
from smtp_border.state import read_state

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
TOKEN = "fuzz-token"


@pytest.fixture
def controller(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "policy.yaml").read_text())
    running = Controller(policy, tmp_path / "ryu-manager.txt", token=TOKEN).start()
    try:
        yield running
    finally:
        running.stop()


def fuzz(controller, *extra):
    result = subprocess.run(
        [SCHEMATHESIS, "run", str(ROOT / "docs" / "openapi.yaml"), "--url", f"http://127.0.0.1:{controller.api_port}",
         "--checks", "not_a_server_error", "--max-examples", "60", "--seed", "1", "--no-color", *extra],
        capture_output=True, text=True, timeout=600,
        cwd=controller.log_file.parent,  # schemathesis keeps a cache in its working directory
    )
    summary = [line for line in result.stdout.splitlines() if "generated" in line]
    print(summary)
    return result


def test_fuzzing_without_the_token_changes_nothing(controller):
    before = controller.api("GET", "/smtp/v1/policy")
    result = fuzz(controller)
    assert result.returncode == 0, result.stdout[-4000:]
    assert controller.api("GET", "/smtp/v1/policy") == before
    assert not controller.state_file.exists()
    assert "Traceback" not in controller.log()


def test_fuzzing_with_the_token_finds_no_server_error(controller):
    result = fuzz(controller, "--header", f"Authorization: Bearer {TOKEN}")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Traceback" not in controller.log()
    assert TOKEN not in controller.log()
    # Whatever was added or removed, the saved state is whole and is what the API says.
    status, body = controller.api("GET", "/smtp/v1/exceptions")
    assert status == 200
    saved = {e["address"] for e in read_state(controller.state_file)} if controller.state_file.exists() else set()
    assert saved == {e["address"] for e in body["exceptions"] if e["source"] == "api"}


def test_the_inputs_of_issue_24_are_400s_naming_the_field_on_a_real_controller(controller):
    """Each body that once got a 500 or did harm, against ryu-manager: a 400
    naming the field, nothing saved, no traceback; the good twin goes through."""
    import json
    import http.client

    good = {"address": "10.20.3.10", "direction": "inbound", "reason": "a mail server"}
    cases = [
        (b'{"address": "10.20.3.10", "direction": "inbound", "reason": "x", "n": ' + b"9" * 5000 + b"}", None),
        (json.dumps(dict(good, expires="9999-12-31T23:00:00-05:00")).encode(), "expires"),
        (b'{"address": "10.20.3.10", "address": "10.20.3.11", "direction": "inbound", "reason": "x"}', "address"),
        (json.dumps(dict(good, reason="\ud800")).encode(), "reason"),
        (json.dumps(dict(good, reason="ok\nsmtp-border: forged line")).encode(), "reason"),
    ]
    for body, field in cases:
        connection = http.client.HTTPConnection("127.0.0.1", controller.api_port, timeout=30)
        connection.request("POST", "/smtp/v1/exceptions", body=body,
                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == 400 and answer.get("field") == field, (body[:80], answer)
    assert not controller.state_file.exists()  # nothing saved
    assert controller.api("POST", "/smtp/v1/exceptions", good, token=TOKEN)[0] in (201, 202)
    assert "Traceback" not in controller.log() and "forged line" not in controller.log()
