"""The REST API against a live ryu-manager and Open vSwitch, with real traffic.

Changes must be in force when the answer comes, touch only their own flows,
survive a restart, and never disturb unrelated traffic.
"""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import ROOT, wait_for
from lab import Lab, Probe
from smtp_border.compiler import compile_switch
from smtp_border.policy import PolicyError, load_policy
from smtp_border.state import read_state

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet and Open vSwitch need root"),
]

TOKEN = "test-token-0123456789"
H1_OUTBOUND = {"address": "10.20.3.10", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "test: over the size limit"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rest")
    policy = directory / "policy.yaml"
    shutil.copy(ROOT / "policy.yaml", policy)
    with Lab(policy, directory, token=TOKEN) as running:
        running.shipped_policy = (ROOT / "policy.yaml").read_text()
        yield running
        errors = running.controller.openflow_errors()
    # Only the errors a test provoked on purpose.
    provoked = getattr(running.controller, "expected_errors", [])
    assert [e for e in errors if e not in provoked] == [], "a switch reported OpenFlow errors"


def api(lab, method, path, body=None, **kwargs):
    return lab.controller.api(method, path, body, **kwargs)


def outcomes(lab, *probes):
    results = lab.run_probes(list(probes))
    return [results[p] for p in probes]


def api_exceptions(lab):
    status, body = api(lab, "GET", "/smtp/v1/exceptions")
    assert status == 200
    return {e["address"] for e in body["exceptions"] if e["source"] == "api"}


def flow_durations(lab):
    """cookie+match -> seconds the flow has existed, for the border switch."""
    flows = {}
    for line in lab.ofctl("dump-flows", "s1").splitlines()[1:]:
        duration = float(re.search(r"duration=([0-9.]+)s", line).group(1))
        key = re.sub(r"(duration|n_packets|n_bytes)=[^,]+, ", "", line).strip()
        flows[key] = duration
    return flows


def test_changes_need_the_token_and_refusals_change_nothing(lab):
    before = api(lab, "GET", "/smtp/v1/policy")
    file_exception = before[1]["exceptions"][0]["id"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}):
        for method, path, body in (
            ("POST", "/smtp/v1/exceptions", H1_OUTBOUND),
            ("DELETE", f"/smtp/v1/exceptions/{file_exception}", None),
            ("POST", "/smtp/v1/reload", None),
        ):
            status, answer = api(lab, method, path, body, token="", headers=headers)
            assert status == 401, (method, path, headers, answer)
            assert "Bearer" in answer["error"] and TOKEN not in json.dumps(answer)
    assert api(lab, "GET", "/smtp/v1/policy") == before
    assert not lab.controller.state_file.exists()
    assert TOKEN not in lab.controller.log()
    # Reading needs no token.
    assert api(lab, "GET", "/smtp/v1/switches", token="")[0] == 200


def test_who_was_blocked_needs_the_token_and_cross_site_or_wide_changes_are_refused(lab):
    for path in ("/smtp/v1/blocked", "/smtp/v1/blocked/top"):
        assert api(lab, "GET", path, token="")[0] == 401
        assert api(lab, "GET", path)[0] == 200
    for path in ("/smtp/v1/policy", "/smtp/v1/switches", "/smtp/v1/mailservers"):
        assert api(lab, "GET", path, token="")[0] == 200
    # With the right token, but from another site's page, or as a form: refused.
    assert api(lab, "POST", "/smtp/v1/exceptions", H1_OUTBOUND, headers={"Origin": "http://evil.example"})[0] == 403
    status, answer = api(lab, "POST", "/smtp/v1/exceptions", json.dumps(H1_OUTBOUND), headers={"Content-Type": "text/plain"})
    assert status == 415 and "Content-Type: application/json" in answer["error"]
    # One request must not exempt the campus: wider than /24 (IPv4) or /64 (IPv6) is the file's business.
    for address, limit in (("10.20.0.0/16", 24), ("fd00:20::/48", 64), ("10.20.6.0/23", 24)):
        status, answer = api(lab, "POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address=address))
        assert (status, answer["field"]) == (400, "address"), answer
        assert f"wider than /{limit}" in answer["error"] and "api.widest_exception" in answer["error"]
    assert api_exceptions(lab) == set()
    status, created = api(lab, "POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address="10.20.7.0/24"))
    assert status == 201, created
    assert api(lab, "DELETE", f"/smtp/v1/exceptions/{created['id']}")[0] == 200


def test_errors_are_json_with_the_right_status(lab):
    json_header = {"Content-Type": "application/json"}
    cases = [
        (("POST", "/smtp/v1/exceptions", "{not json"), {"headers": json_header}, 400, "request body is not valid JSON"),
        (("POST", "/smtp/v1/exceptions", "[1, 2]"), {"headers": json_header}, 400, "request body must be a JSON object"),
        (("POST", "/smtp/v1/exceptions", b"\xff\xfe"), {"headers": json_header}, 400, "request body is not UTF-8"),
        (("POST", "/smtp/v1/exceptions", "{}"), {"headers": {"Content-Type": "text/plain"}}, 415, "a change needs Content-Type: application/json"),
        (("POST", "/smtp/v1/exceptions", "x" * 70000), {"headers": json_header}, 413, "request body larger than"),
        (("POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, direction="sideways")), {}, 400, "direction: 'sideways' is not a direction"),
        (("POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address="10.20.3.300")), {}, 400, "address: '10.20.3.300' is not an IP address or network"),
        (("POST", "/smtp/v1/exceptions", {"address": "10.20.3.10", "direction": "outbound"}), {}, 400, "reason: missing required key"),
        (("POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address="192.0.2.7")), {}, 400, "192.0.2.7/32 is not inside the campus prefixes"),
        (("POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address="10.20.1.5")), {}, 409, "an exception for 10.20.1.5/32 already exists"),
        (("DELETE", "/smtp/v1/exceptions/000000000000", None), {}, 404, "no exception with id '000000000000'"),
        (("POST", "/smtp/v1/exceptions/batch", {"add": [], "delete": []}), {}, 400, "unknown key 'delete'; a batch has 'add' and 'remove'"),
        (("POST", "/smtp/v1/exceptions/batch", {"add": {}}), {}, 400, "add: expected a list"),
        (("POST", "/smtp/v1/exceptions/batch", {"remove": ["000000000000"]}), {}, 404, "remove[0]: no exception with id '000000000000'"),
        (("POST", "/smtp/v1/exceptions/batch", {"remove": ["x"] * 10001}), {}, 413, "a batch holds at most 10000 exceptions"),
        (("GET", "/smtp/v1/nowhere", None), {}, 404, "no such resource: /smtp/v1/nowhere"),
        (("PUT", "/smtp/v1/policy", None), {}, 405, "PUT is not allowed here; use GET"),
    ]
    for (method, path, body), kwargs, status, message in cases:
        got_status, answer = api(lab, method, path, body, **kwargs)
        assert (got_status, message in answer["error"]) == (status, True), (method, path, answer)
    status, answer = api(lab, "POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, direction="sideways"))
    assert answer["field"] == "direction"
    status, answer = api(lab, "DELETE", f"/smtp/v1/exceptions/{api(lab, 'GET', '/smtp/v1/exceptions')[1]['exceptions'][0]['id']}")
    assert status == 409 and "remove it there and reload" in answer["error"]
    assert api_exceptions(lab) == set()


def test_exception_is_enforced_when_the_answer_comes_and_only_its_flows_change(lab):
    blocked, twin = Probe("h1", "outmx", 25), Probe("h1", "outmx", 2525)
    other, relay = Probe("h2", "outmx", 25), Probe("relay", "outmx", 25)
    assert outcomes(lab, blocked, twin, other, relay) == ["timeout", "open", "timeout", "open"]
    before = flow_durations(lab)

    status, created = api(lab, "POST", "/smtp/v1/exceptions", H1_OUTBOUND)
    assert status == 201, created
    assert created["source"] == "api" and created["address"] == "10.20.3.10/32"
    # Right after the 201: the switch has confirmed it.
    assert outcomes(lab, blocked, twin, other, relay, Probe("h1", "outmx", 25, family=6)) == [
        "open", "open", "timeout", "open", "timeout"
    ]
    after = flow_durations(lab)
    new = set(after) - set(before)
    assert len(new) == 1 and "nw_src=10.20.3.10" in new.pop()
    # Every other flow was left alone: it kept its age (not re-added).
    for key, age in before.items():
        assert after[key] >= age, key

    status, answer = api(lab, "DELETE", f"/smtp/v1/exceptions/{created['id']}")
    assert (status, answer["switches"]) == (200, {"enforced": ["0000000000000001"], "pending": []})
    assert outcomes(lab, blocked, twin, other, relay) == ["timeout", "open", "timeout", "open"]
    assert set(flow_durations(lab)) == set(before)
    assert api(lab, "DELETE", f"/smtp/v1/exceptions/{created['id']}")[0] == 404


def test_a_batch_is_one_change_in_force_when_the_answer_comes(lab):
    h1_out, h1_twin, h2_v6, h1_in = (
        Probe("h1", "outmx", 25), Probe("h1", "outmx", 2525), Probe("h2", "outmx", 25, family=6), Probe("outhost", "h1", 25)
    )
    h2_v4 = Probe("h2", "outmx", 25)
    assert outcomes(lab, h1_out, h1_twin, h2_v6, h2_v4, h1_in) == ["timeout", "open", "timeout", "timeout", "timeout"]
    # 200 inbound exceptions in unused campus space, spaced so that none merge.
    filler = [{"address": f"10.20.{110 + i // 250}.{i % 250 + 1}", "direction": "inbound", "reason": "batch"}
              for i in range(0, 400, 2)]
    h2_outbound_v6 = {"address": "fd00:20:0:3::11", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "batch: IPv6 only"}
    before = flow_durations(lab)

    # One bad item refuses the whole batch, naming the item; nothing changes.
    status, answer = api(lab, "POST", "/smtp/v1/exceptions/batch",
                         {"add": filler + [H1_OUTBOUND, dict(h2_outbound_v6, direction="sideways")]})
    assert (status, answer["field"]) == (400, f"add[{len(filler) + 1}].direction"), answer
    assert set(flow_durations(lab)) == set(before) and api_exceptions(lab) == set()

    status, answer = api(lab, "POST", "/smtp/v1/exceptions/batch", {"add": filler + [H1_OUTBOUND, h2_outbound_v6]})
    assert status == 200, answer
    assert answer["switches"] == {"enforced": ["0000000000000001"], "pending": []}
    # In force when the answer came, on both sides of each check.
    assert outcomes(lab, h1_out, h1_twin, h2_v6, h2_v4, h1_in) == ["open", "open", "open", "timeout", "timeout"]
    assert len(flow_durations(lab)) == len(before) + len(filler) + 2

    # Change h1 to inbound and remove everything else, in one batch.
    ids = [e["id"] for e in api(lab, "GET", "/smtp/v1/exceptions")[1]["exceptions"] if e["source"] == "api"]
    status, answer = api(lab, "POST", "/smtp/v1/exceptions/batch",
                         {"remove": ids, "add": [{"address": H1_OUTBOUND["address"], "direction": "inbound",
                                                  "reason": "now a mail server"}]})
    assert status == 200, answer
    assert (len(answer["removed"]), [e["direction"] for e in answer["added"]]) == (len(filler) + 2, ["inbound"])
    assert outcomes(lab, h1_out, h1_twin, h2_v6, h2_v4, h1_in) == ["timeout", "open", "timeout", "timeout", "open"]
    assert api_exceptions(lab) == {"10.20.3.10/32"}
    assert all(s["in_sync"] for s in api(lab, "GET", "/smtp/v1/switches")[1]["switches"])

    assert api(lab, "DELETE", f"/smtp/v1/exceptions/{answer['added'][0]['id']}")[0] == 200
    assert outcomes(lab, h1_in, h1_twin) == ["timeout", "open"]
    assert set(flow_durations(lab)) == set(before)


def test_switches_report_connection_flows_and_sync(lab):
    status, body = api(lab, "GET", "/smtp/v1/switches")
    assert status == 200
    by_dpid = {s["dpid"]: s for s in body["switches"]}
    border = by_dpid["0000000000000001"]
    assert {k: border[k] for k in ("name", "role", "uplinks", "connected", "flow_count", "in_sync", "pending", "bundles",
                                 "fragments")} == {
        "name": "border", "role": "enforcing", "uplinks": [1], "connected": True,
        "flow_count": len(compile_switch(load_policy(ROOT / "policy.yaml"), 1)),
        "in_sync": True, "pending": None, "bundles": True, "fragments": "nx-match",
    }
    assert border["last_audit"] is not None
    assert by_dpid["0000000000000002"]["role"] == "inside" and by_dpid["0000000000000002"]["flow_count"] == 2


def test_flows_changed_behind_the_controllers_back_are_repaired_within_the_audit_period(lab):
    """ovs-ofctl del-flows on the border switch, then an allow flow added by
    hand: each is found by the next audit (every AUDIT_SECONDS, 1 s in the
    tests) and repaired; SMTP is blocked again, ordinary traffic flows."""
    blocked, twin, relay = Probe("h1", "outmx", 25), Probe("h1", "outmx", 2525), Probe("relay", "outmx", 25)
    assert outcomes(lab, blocked, twin, relay) == ["timeout", "open", "open"]
    expected = lab.ofctl("dump-flows", "s1", "--no-stats").count("cookie=")

    def repaired():
        dump = lab.ofctl("dump-flows", "s1", "--no-stats")
        return dump.count("cookie=") == expected and "priority=450" not in dump

    lab.ofctl("del-flows", "s1")  # everything gone: fail-secure drops all
    started = time.monotonic()
    assert wait_for(repaired, timeout=10)
    print(f"\ndel-flows repaired after {time.monotonic() - started:.1f} s")
    assert outcomes(lab, blocked, twin, relay) == ["timeout", "open", "open"]

    # An ordinary TCP stream runs through the repair of the next hole: it never stalls.
    stream = lab.start_stream("h2", "outmx", 2525, seconds=5)
    lab.ofctl("add-flow", "s1", "table=1,priority=450,ip,metadata=0x1/0x7,nw_src=10.20.3.10,actions=goto_table:2")
    assert outcomes(lab, blocked, twin) == ["open", "open"]  # the hole works, until the audit finds it
    started = time.monotonic()
    assert wait_for(repaired, timeout=10)
    print(f"extra allow flow removed after {time.monotonic() - started:.1f} s")
    assert outcomes(lab, blocked, twin, relay) == ["timeout", "open", "open"]
    stream_out = stream.communicate(timeout=40)[0].decode().split()
    assert stream_out[0] == "stream" and int(stream_out[1]) > 0, stream_out
    assert int(stream_out[2]) < 200, f"ordinary traffic stalled for {stream_out[2]} ms during the repair"
    s1 = api(lab, "GET", "/smtp/v1/switches?verify=1")[1]["switches"][0]
    assert s1["in_sync"] is True and s1["repairs"] >= 2
    text = lab.controller.metrics_text()
    assert re.search(r'smtp_border_drift_repairs_total\{switch="0000000000000001"\} [2-9]', text), text


def test_reload_applies_an_edited_file_and_refuses_a_broken_one(lab):
    policy_file = lab.controller.policy_file
    inbound = Probe("outhost", "h1", 25)
    checks = [Probe("h1", "outmx", 25), Probe("h1", "outmx", 2525), Probe("relay", "outmx", 25), Probe("outhost", "dept", 25)]
    assert outcomes(lab, inbound, *checks) == ["timeout", "timeout", "open", "open", "open"]

    policy_file.write_text(lab.shipped_policy.replace(
        "exceptions:\n",
        "exceptions:\n  - {address: 10.20.3.10, direction: inbound, reason: test mail server on h1}\n", 1,
    ))
    status, body = api(lab, "POST", "/smtp/v1/reload")
    assert status == 200, body
    assert [e["address"] for e in body["added"]] == ["10.20.3.10/32"] and body["removed"] == []
    assert body["switches"] == {"enforced": ["0000000000000001"], "pending": []} and body["quarantined"] == []
    assert outcomes(lab, inbound, *checks) == ["open", "timeout", "open", "open", "open"]

    broken = lab.shipped_policy.replace("10.20.1.5", "10.20.1.500")
    policy_file.write_text(broken)
    status, body = api(lab, "POST", "/smtp/v1/reload")
    with pytest.raises(PolicyError) as startup_check:
        load_policy(policy_file)
    assert status == 400
    assert body["error"] == str(startup_check.value)
    assert body["error"].endswith("exceptions[0].address: '10.20.1.500' is not an IP address or network")
    # The policy in force is still the edited one.
    assert outcomes(lab, inbound, *checks) == ["open", "timeout", "open", "open", "open"]

    policy_file.write_text(lab.shipped_policy)
    status, body = api(lab, "POST", "/smtp/v1/reload")
    assert status == 200 and [e["address"] for e in body["removed"]] == ["10.20.3.10/32"]
    assert outcomes(lab, inbound, *checks) == ["timeout", "timeout", "open", "open", "open"]


def test_api_exceptions_survive_a_controller_restart(lab):
    status, created = api(lab, "POST", "/smtp/v1/exceptions", {
        "address": "fd00:20:0:3::11", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "test: restart",
        "contact": "ops@example.edu", "expires": "2031-01-01T00:00:00Z",
    })
    assert status == 201
    restart(lab)
    assert outcomes(lab, Probe("h2", "outmx", 25, family=6), Probe("h2", "outmx", 25, family=4)) == ["open", "timeout"]
    status, body = api(lab, "GET", f"/smtp/v1/exceptions/{created['id']}")
    del created["switches"]
    assert (status, body) == (200, dict(created, state="active"))
    assert api(lab, "DELETE", f"/smtp/v1/exceptions/{created['id']}")[0] == 200
    assert outcomes(lab, Probe("h2", "outmx", 25, family=6)) == ["timeout"]


def restart(lab):
    before = {dpid: lab.controller.installs(dpid) for dpid in lab.dpids()}
    lab.controller.stop(signal.SIGKILL)
    lab.controller.start()  # raises if ryu-manager exits
    lab.controller.wait_installs({dpid: count + 1 for dpid, count in before.items()})


def test_every_accepted_reload_survives_a_restart(lab):
    """Moving an API exception into policy.yaml, and removing the campus
    prefix an API exception lies in, are accepted by a reload, which
    quarantines the API copy; the controller then restarts and enforces the
    same policy (it used to exit and enforce nothing)."""
    policy_file = lab.controller.policy_file
    h2_out4, h2_out6, h2_in4 = Probe("h2", "outmx", 25), Probe("h2", "outmx", 25, family=6), Probe("outhost", "h2", 25)
    twins = [Probe("h2", "outmx", 2525), Probe("h1", "outmx", 25)]
    status, v4 = api(lab, "POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address="10.20.3.11"))
    status6, v6 = api(lab, "POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address="fd00:20:0:3::11"))
    assert (status, status6) == (201, 201)
    assert outcomes(lab, h2_out4, h2_out6, h2_in4, *twins) == ["open", "open", "timeout", "open", "timeout"]

    # 1. The v4 exception moves into the file, as inbound.
    policy_file.write_text(lab.shipped_policy.replace(
        "exceptions:\n", "exceptions:\n  - {address: 10.20.3.11, direction: inbound, reason: now a mail server}\n", 1))
    status, body = api(lab, "POST", "/smtp/v1/reload")
    assert status == 200, body
    assert [(q["address"], q["state"]) for q in body["quarantined"]] == [("10.20.3.11/32", "quarantined")]
    assert "whose entry is in force" in body["quarantined"][0]["quarantine_reason"]
    in_force = ["timeout", "open", "open", "open", "timeout"]
    assert outcomes(lab, h2_out4, h2_out6, h2_in4, *twins) == in_force
    restart(lab)
    assert outcomes(lab, h2_out4, h2_out6, h2_in4, *twins) == in_force
    assert "QUARANTINED" in lab.controller.log()

    # 2. The campus prefixes shrink and leave out fd00:20:0:3::/64, which
    # holds the v6 exception: it is quarantined. h2 still sits on a
    # campus-side port, so Part 2 holds for it by port whatever its address
    # (policy.md): its IPv6 mail to the outside is blocked now.
    policy_file.write_text(policy_file.read_text().replace(
        '    - "fd00:20::/48"\n', '    - "fd00:20::/63"\n    - "fd00:20:0:2::/64"\n'))
    status, body = api(lab, "POST", "/smtp/v1/reload")
    assert status == 200, body
    assert sorted(q["address"] for q in body["quarantined"]) == ["10.20.3.11/32", "fd00:20:0:3::11/128"]
    restart(lab)
    quarantined = [e for e in api(lab, "GET", "/smtp/v1/exceptions")[1]["exceptions"] if e["state"] == "quarantined"]
    assert sorted(e["id"] for e in quarantined) == sorted([v4["id"], v6["id"]])
    assert outcomes(lab, h2_out4, h2_out6, h2_in4, *twins) == ["timeout", "timeout", "open", "open", "timeout"]

    # The shipped file again: both API exceptions are enforced again; then removed.
    policy_file.write_text(lab.shipped_policy)
    status, body = api(lab, "POST", "/smtp/v1/reload")
    assert (status, body["quarantined"]) == (200, [])
    assert outcomes(lab, h2_out4, h2_out6, h2_in4, *twins) == ["open", "open", "timeout", "open", "timeout"]
    for exception in (v4, v6):
        assert api(lab, "DELETE", f"/smtp/v1/exceptions/{exception['id']}")[0] == 200
    assert api_exceptions(lab) == set()


def test_fifty_concurrent_clients_lose_no_update_and_disturb_no_traffic(lab):
    clients, rounds, seconds = 50, 4, 20
    stream = lab.start_stream("relay", "outmx", 25, seconds=seconds)
    blocked = lab.start_probe_loop("h2", "outmx", 25, seconds=seconds)
    allowed = lab.start_probe_loop("bigmail", "outmx", 25, seconds=seconds)

    def client(i):
        """Add and remove one's own exception; odd clients end with it added."""
        body = {"address": f"10.20.100.{i + 1}", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": f"client {i}"}
        statuses = []
        for r in range(rounds):
            status, created = api(lab, "POST", "/smtp/v1/exceptions", body)
            statuses.append(status)
            if r < rounds - 1 or i % 2 == 0:
                statuses.append(api(lab, "DELETE", f"/smtp/v1/exceptions/{created['id']}")[0])
        return statuses

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    assert all(set(s) <= {201, 200} for s in results), results

    expected = {f"10.20.100.{i + 1}/32" for i in range(clients) if i % 2}
    assert api_exceptions(lab) == expected
    assert {e["address"] for e in read_state(lab.controller.state_file)} == expected
    switches = api(lab, "GET", "/smtp/v1/switches")[1]["switches"]
    assert all(s["in_sync"] for s in switches), switches

    stream_out = stream.communicate(timeout=seconds + 30)[0].decode().split()
    blocked_out = blocked.communicate(timeout=seconds + 30)[0].decode().split()
    allowed_out = allowed.communicate(timeout=seconds + 30)[0].decode().split()
    print(f"stream: {stream_out}; blocked samples {len(blocked_out)}; allowed samples {len(allowed_out)}")
    assert stream_out[0] == "stream" and int(stream_out[1]) > 0
    # A dropped segment would stall the sender for a retransmission timeout (>= 200 ms).
    assert int(stream_out[2]) < 200, f"the stream stalled for {stream_out[2]} ms"
    assert blocked_out and set(blocked_out) == {"timeout"}
    assert allowed_out and set(allowed_out) == {"open"}

    for i in range(1, clients, 2):
        exception_id = next(e["id"] for e in api(lab, "GET", "/smtp/v1/exceptions")[1]["exceptions"]
                            if e["address"] == f"10.20.100.{i + 1}/32")
        assert api(lab, "DELETE", f"/smtp/v1/exceptions/{exception_id}")[0] == 200
    assert api_exceptions(lab) == set()


def test_a_push_the_switch_refuses_is_answered_502_and_retried_until_enforced(lab):
    """Open vSwitch refuses the change (its policy table is made full): the
    answer is 502 naming the switch and the error; nothing is half-applied;
    once the table has room, the controller's own retries enforce it, with
    no second request."""
    blocked, twin = Probe("h1", "outmx", 25), Probe("h1", "outmx", 2525)
    table1 = sum(1 for line in lab.ofctl("dump-flows", "s1", "table=1").splitlines() if "cookie=" in line)
    subprocess.run(["ovs-vsctl", "--", "--id=@t", "create", "Flow_Table", f"flow_limit={table1}", "overflow_policy=refuse",
                    "--", "set", "bridge", "s1", "flow_tables:1=@t"], check=True)
    try:
        status, answer = api(lab, "POST", "/smtp/v1/exceptions", H1_OUTBOUND)
        assert status == 502, answer
        pending = answer["switches"]["pending"]
        assert [p["dpid"] for p in pending] == ["0000000000000001"] and "OFPFMFC_TABLE_FULL" in pending[0]["reason"]
        assert "retries by itself" in answer["error"]
        assert outcomes(lab, blocked, twin) == ["timeout", "open"]  # not enforced, nothing else disturbed
        s1 = api(lab, "GET", "/smtp/v1/switches")[1]["switches"][0]
        assert s1["in_sync"] is False and "TABLE_FULL" in s1["pending"]
    finally:
        subprocess.run(["ovs-vsctl", "remove", "bridge", "s1", "flow_tables", "1"], check=True)
    started = time.monotonic()
    assert wait_for(lambda: api(lab, "GET", "/smtp/v1/switches")[1]["switches"][0]["in_sync"], 40)
    print(f"\nrefused push enforced by a retry {time.monotonic() - started:.1f} s after the table had room")
    assert outcomes(lab, blocked, twin) == ["open", "open"]
    # A retry of the request by the client is safe: the same exception is answered 200.
    status, again = api(lab, "POST", "/smtp/v1/exceptions", H1_OUTBOUND)
    assert (status, again["switches"]) == (200, {"enforced": ["0000000000000001"], "pending": []})
    assert api(lab, "DELETE", f"/smtp/v1/exceptions/{again['id']}")[0] == 200
    assert outcomes(lab, blocked, twin) == ["timeout", "open"]
    errors = lab.controller.openflow_errors()
    assert any("OFPFMFC_TABLE_FULL" in e for e in errors)
    # What the refused bundle caused: the full table, and the bundle's own failure.
    lab.controller.expected_errors = [e for e in errors if "TABLE_FULL" in e or "OFPET_EXPERIMENTER" in e or "BUNDLE" in e.upper()]


def test_a_change_made_while_a_switch_is_away_reaches_it_when_it_returns(lab):
    probe, twin = Probe("h2", "outmx", 25), Probe("h2", "outmx", 2525)
    with lab.cut_off("s1"):
        assert wait_for(lambda: not any(s["connected"] for s in api(lab, "GET", "/smtp/v1/switches")[1]["switches"]
                                          if s["dpid"] == "0000000000000001"), 10)
        status, created = api(lab, "POST", "/smtp/v1/exceptions", dict(H1_OUTBOUND, address="10.20.3.11"))
        # Saved, and the answer says where it is not in force yet.
        assert status == 202, created
        assert created["switches"] == {"enforced": [], "pending": [
            {"dpid": "0000000000000001", "name": "border", "reason": "not connected", "connected": False}]}
        # The switch is away: it keeps enforcing what it had, and forwarding.
        assert outcomes(lab, probe, twin) == ["timeout", "open"]
        before = lab.controller.installs(1)
    lab.controller.wait_installs({1: before + 1})
    assert outcomes(lab, probe, twin, Probe("h1", "outmx", 25)) == ["open", "open", "timeout"]
    assert api(lab, "DELETE", f"/smtp/v1/exceptions/{created['id']}")[0] == 200
    assert outcomes(lab, probe) == ["timeout"]


LOAD_SECONDS = float(os.environ.get("SMTP_BORDER_LOAD_SECONDS", "60"))


def test_fifty_clients_for_a_minute(lab):
    """50 clients add and remove exceptions for a minute (each bounded to 2,000
    requests): every request answered, no update lost, switches end in sync."""
    clients = 50
    deadline = time.monotonic() + LOAD_SECONDS

    def client(i):
        body = {"address": f"10.20.101.{i + 1}", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": f"load client {i}"}
        latencies, failures, present, exception_id = [], [], False, None
        while time.monotonic() < deadline and len(latencies) < 2000:
            started = time.monotonic()
            if present:
                status, _ = api(lab, "DELETE", f"/smtp/v1/exceptions/{exception_id}")
                present = status != 200
                ok = status == 200
            else:
                status, created = api(lab, "POST", "/smtp/v1/exceptions", body)
                present = status == 201
                exception_id = created.get("id") if present else None
                ok = status == 201
            latencies.append(time.monotonic() - started)
            if not ok:
                failures.append(status)
        return latencies, failures, present

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    latencies = sorted(l for r in results for l in r[0])
    failures = [f for r in results for f in r[1]]
    expected = {f"10.20.101.{i + 1}/32" for i, r in enumerate(results) if r[2]}
    print(f"load: {clients} clients, {LOAD_SECONDS:.0f} s, {len(latencies)} requests "
          f"({len(latencies) / LOAD_SECONDS:.0f}/s), p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, failures {len(failures)}; "
          f"{len(expected)} exceptions left")
    assert failures == []
    assert api_exceptions(lab) == expected
    assert {e["address"] for e in read_state(lab.controller.state_file)} == expected
    assert all(s["in_sync"] for s in api(lab, "GET", "/smtp/v1/switches")[1]["switches"])
    leftover = [e["id"] for e in api(lab, "GET", "/smtp/v1/exceptions")[1]["exceptions"] if e["address"] in expected]
    for leftover_id in leftover:
        assert api(lab, "DELETE", f"/smtp/v1/exceptions/{leftover_id}")[0] == 200
    assert api_exceptions(lab) == set()
