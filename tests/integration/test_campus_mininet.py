"""End to end: real ryu-manager, real Open vSwitch (userspace datapath), real TCP.

Each policy variant brings up the Mininet campus once and runs every clause of
the policy in both IP versions. Every "blocked" probe has an "allowed" twin on
the same path, so a broken network cannot pass for a working policy.
"""
import datetime
import os
import re
import signal
import subprocess
import time

import pytest
import yaml

import campus
from conftest import ROOT, wait_for
from lab import Lab, Probe
from smtp_border.pipeline import choose
from smtp_border.policy import load_policy
from smtp_border.rules import AUDIT_METERS, sorted_rules, to_ofctl, with_version

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet and Open vSwitch need root"),
]

EXPIRED_FOR = "h2"
SCRATCH = "smtpcmp"  # a bridge with no ports, to compare a switch's flows with


def policy_for(variant, directory):
    """The shipped policy, plus an exception that has expired, in four variants:
    'uplinks' as shipped (s1 enforces by port: port 1 faces outside), with the
    campus switch s2 declared an access switch (every port campus-side);
    'no-bundles' as shipped (s1 alone); 'addresses' without `switches` (every
    switch enforces by address); 'single-table' as 'uplinks' with both
    switches in the one-table profile, without meters (and without bundles:
    the fixture turns them off), as a hardware switch would have it."""
    with open(ROOT / "policy.yaml") as stream:
        document = yaml.safe_load(stream)
    ip4, ip6, _ = campus.HOST_ADDRESSES[EXPIRED_FOR]
    for address in (ip4, ip6):
        document["exceptions"].append({
            "address": address,
            "direction": "both", "grounds": "message-size", "needs_message_size": "200MB",
            "reason": "test: expired exception is not enforced",
            "expires": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
        })
    if variant == "addresses":
        del document["switches"]
    elif variant in ("uplinks", "single-table"):  # no-bundles keeps s1 alone, so that s1 holds Part 2 by port too
        document["switches"].append({"dpid": 2, "name": "campus access", "access": True})
    if variant == "single-table":
        for switch in document["switches"]:
            switch.update(pipeline="single_table", meters=False)
    path = directory / f"policy-{variant}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# uplinks: the shipped policy; addresses: without `switches`; no-bundles: the
# shipped policy with bundles turned off, as for a switch that has none.
@pytest.fixture(scope="module", params=["uplinks", "addresses", "no-bundles", "single-table"])
def lab(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    policy = policy_for(request.param, directory)
    with Lab(policy, directory, bundles=request.param not in ("no-bundles", "single-table")) as running:
        running.variant = request.param
        yield running
        errors = running.controller.openflow_errors()
    assert errors == [], "a switch reported OpenFlow errors"


def expected(scenario, variant):
    if scenario.source and variant == "addresses":
        # By addresses alone, a campus source is campus and any other is
        # outside: the forged source passes as campus (to campus), the
        # unlisted one as outside (transit). docs/policy.md names both.
        return True
    return scenario.allowed


def probes_for(variant):
    for family in (4, 6):
        for scenario in campus.SCENARIOS:
            probe = Probe(
                scenario.client, scenario.server, scenario.port, family, scenario.proto,
                src=scenario.source_address(family),
            )
            yield f"{scenario.clause} (IPv{family})", probe, expected(scenario, variant)


def test_every_clause_in_both_ip_versions(lab):
    cases = list(probes_for(lab.variant))
    results = lab.run_probes([probe for _, probe, _ in cases])
    report, wrong = [], []
    for what, probe, expected in cases:
        got = results[probe]
        want = "open" if expected else "timeout"
        report.append(f"{'ok ' if got == want else 'BAD'} {what}: {probe.describe()}: want {want}, got {got}")
        if got != want:
            wrong.append(report[-1])
    print("\n".join(report))
    assert wrong == []


@pytest.mark.parametrize("family", [4, 6])
def test_ping_crosses_the_border(lab, family):
    ip = lab.address("outmx", family)
    out = lab.host("h1").cmd(f"ping -{family} -c 2 -W 2 {ip}")
    assert " 0% packet loss" in out, out


def installed_differences(lab, dpid, policy):
    """What `ovs-ofctl diff-flows` finds between the switch and the compiled rules
    (empty when the switch holds exactly the compiled flows), in the version
    of the policy table the controller says the switch holds (a switch
    without bundles alternates: smtp_border/ordering.py).

    The rules are loaded into a scratch bridge and the two bridges compared:
    diff-flows against a file reports a flow with a masked nw_frag as both
    missing and extra, even one the switch loaded from that very file."""
    switch = next(s for s in lab.net.switches if int(s.dpid, 16) == dpid)
    status = next(s for s in lab.controller.api("GET", "/smtp/v1/switches")[1]["switches"] if s["dpid"] == f"{dpid:016x}")
    version = status.get("version", 0)
    expected = lab.workdir / f"expected-{dpid}.flows"
    profile = choose(policy.switch_spec(dpid), None).profile  # explicit, or auto: what Open vSwitch gets
    rules = [with_version(r, version) for r in sorted_rules(profile.compile(policy, dpid))]
    expected.write_text("\n".join(to_ofctl(r) for r in rules) + "\n")
    subprocess.run(["ovs-vsctl", "--if-exists", "del-br", SCRATCH, "--", "add-br", SCRATCH, "--", "set", "bridge", SCRATCH,
                    "datapath_type=netdev", "protocols=OpenFlow13", "fail_mode=secure"], check=True)
    try:
        for meter in AUDIT_METERS:
            lab.ofctl("add-meter", SCRATCH, f"meter={meter},pktps,burst,band=type=drop,rate=10,burst_size=10")
        lab.ofctl("add-flows", SCRATCH, str(expected))
        diff = subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", "diff-flows", switch.name, SCRATCH], capture_output=True, text=True,
        )
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", SCRATCH], check=True)
    assert diff.returncode in (0, 2), diff.stderr
    return diff.stdout.strip()


def test_switches_hold_exactly_the_compiled_flows(lab):
    policy = load_policy(lab.controller.policy_file)
    for dpid in lab.dpids():
        assert installed_differences(lab, dpid, policy) == ""
        dump = lab.ofctl("dump-flows", f"s{dpid}")
        # Proactive: only blocked packets go to the controller, through the
        # audit meter of their direction; nothing that is forwarded ever does.
        for line in dump.splitlines():
            if "CONTROLLER" in line:
                part1 = re.search(r"cookie=0x534d20", line)
                assert part1 or re.search(r"cookie=0x534d21", line), line
                assert line.endswith(f"actions=meter:{1 if part1 else 2},CONTROLLER:128"), line
        assert "timeout" not in dump
        if lab.variant == "single-table" and policy.switch_spec(dpid) is not None:
            # (Inside switches are auto: Open vSwitch gets three tables.) One table, no metadata, goto or meter: what the profile promises a hardware switch.
            assert not re.search(r"table=[1-9]|write_metadata|goto_table|meter", dump), dump
            assert lab.ofctl("dump-meters", f"s{dpid}").count("meter=") == 0


# -- packets a switch cannot classify (crafted with scapy: mininet/craft.py) --

# kind -> IP versions, and per TCP destination port what must happen:
# "answered" (it reaches the server, whose listener answers SYN-ACK),
# "arrives" (it reaches the server, which has no VLAN device to answer on),
# "dropped" (no first fragment, nor the whole packet, reaches the server).
# Where the switch cannot see the port, 2525 is dropped as 25 is: the same
# packet could as well have been for 25. The twins that pass are the same
# constructions with the headers where the switch can read them.
CRAFTED = [
    ("whole", (4, 6), {25: "dropped", 2525: "answered"}),
    ("fragmented", (4, 6), {25: "dropped", 2525: "answered"}),
    ("tiny", (4, 6), {25: "dropped", 2525: "dropped"}),
    ("chain", (6,), {25: "dropped", 2525: "answered"}),
    ("chain_fragmented", (6,), {25: "dropped", 2525: "answered"}),
    ("chain_cut", (6,), {25: "dropped", 2525: "dropped"}),
    ("vlan", (4, 6), {25: "dropped", 2525: "arrives"}),
    ("qinq", (4, 6), {25: "dropped", 2525: "dropped"}),
    ("double_q", (4, 6), {25: "dropped", 2525: "dropped"}),
    ("mpls", (4, 6), {25: "dropped", 2525: "dropped"}),
]
# Both directions across the border: Part 2 (campus to outside), Part 1.
CRAFT_PATHS = [("h1", "outmx"), ("outhost", "h1")]


def crafted_cases(lab):
    cases = []
    for client, server in CRAFT_PATHS:
        for kind, families, ports in CRAFTED + [("overlap", (4, 6), {25: "overlap"})]:
            for family in families:
                for port, want in ports.items():
                    cases.append(dict(
                        kind=kind, src=lab.address(client, family), dst=lab.address(server, family),
                        src_mac=lab.host(client).MAC(), dst_mac=lab.host(server).MAC(), port=port, decoy=2525,
                        marker=40000 + len(cases), client=client, server=server, want=want,
                    ))
    return cases


def outcome(case, seen):
    """What happened to one case, from the frames its server and client saw."""
    marker = case["marker"]
    # The server's own SYN-ACKs go to the marker port; everything else with
    # the marker (source port, IPv4 or fragment identification) is the case's.
    arrived = [f for f in seen[case["server"]] if f["dport"] != marker and marker in (f["sport"], f["id"])]
    firsts = sorted({f["dport"] for f in arrived if f["offset"] == 0 and f["sport"] == marker})
    cut_firsts = [f for f in arrived if f["offset"] == 0 and f["sport"] is None]  # a first fragment without TCP
    answered = sorted({f["sport"] for f in seen[case["client"]] if f["dport"] == marker and f["flags"] == 0x12})
    if case["want"] == "overlap":
        return "overlap" if firsts == [case["decoy"]] and answered == [case["decoy"]] else f"{firsts} {answered}"
    if not firsts and not cut_firsts and not answered:
        return "dropped"
    if answered == [case["port"]]:
        return "answered"
    return "arrives" if firsts == [case["port"]] or cut_firsts else f"{firsts} {answered}"


def test_packets_the_switch_cannot_classify_do_not_cross(lab):
    """Crafted SYNs against real listeners, both directions, IPv4 and IPv6:
    fragments (whole header first, tiny, overlapping), IPv6 extension header
    chains with and without fragmentation, VLAN, QinQ and MPLS. Nothing to
    port 25 reaches a server; the readable twins to 2525 do."""
    cases = crafted_cases(lab)
    sends = {}
    for case in cases:
        sends.setdefault(case["client"], []).append({k: v for k, v in case.items() if k not in ("client", "server", "want")})
    seen = lab.craft(sends, watch={c for path in CRAFT_PATHS for c in path}, seconds=8)
    report, wrong = [], []
    for case in cases:
        got = outcome(case, seen)
        line = (f"{'ok ' if got == case['want'] else 'BAD'} {case['kind']} IPv{6 if ':' in case['dst'] else 4} "
                f"{case['client']} -> {case['server']}:{case['port']}: want {case['want']}, got {got}")
        report.append(line)
        if got != case["want"]:
            wrong.append(line)
    print("\n".join(report))
    assert wrong == []
    # The drops count what they dropped (on s1, or on the first enforcing
    # switch on the way where every switch enforces by addresses).
    dumps = "".join(lab.ofctl("dump-flows", switch.name) for switch in lab.net.switches)
    counted = re.findall(r"cookie=0x534d23\w+, .*n_packets=(\d+)", dumps)
    assert counted and sum(map(int, counted)) > 0, "the unclassifiable drops counted nothing"


@pytest.mark.parametrize("family", [4, 6])
def test_ordinary_fragmented_traffic_crosses(lab, family):
    """Fragmented ICMP both ways (3,000-byte pings: three fragments each
    way); fragmented TCP is in the crafted test above (its 2525 twins)."""
    out = lab.host("h1").cmd(f"ping -{family} -c 20 -i 0.05 -s 3000 -W 2 {lab.address('outmx', family)}")
    print(out.strip().splitlines()[-2:])
    assert " 0% packet loss" in out, out


# -- reconnects and restarts (uplinks variant; the mechanism is the same) -----

# Resynchronisation does not depend on addresses or uplinks, but it does on
# whether the switch takes bundles: test it with and without.
RESYNC_VARIANTS = pytest.mark.parametrize("lab", ["uplinks", "no-bundles"], indirect=True)
HOLE = "table=0,priority=1000,tcp,tp_dst=25,actions=goto_table:2"


def blocked_and_allowed(lab, family=4):
    # Part 1 is judged by the border switch s1 alone (the access switch s2 of
    # the uplinks variant sees campus to campus): a hole in s1 shows here.
    results = lab.run_probes([
        Probe("outhost", "h1", 25, family), Probe("relay", "outmx", 25, family), Probe("outhost", "h1", 2525, family),
    ])
    return [results[p] for p in results]


def open_hole(lab):
    """Add a flow that lets all SMTP through, and prove it does."""
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "s1", HOLE], check=True)
    assert blocked_and_allowed(lab) == ["open", "open", "open"], "the stale flow should open a hole"


@RESYNC_VARIANTS
def test_reconnect_removes_stale_flows(lab):
    # The hole is made while the switch is cut off: connected, the next audit
    # (every second here) would close it before it could be shown open.
    before = lab.controller.installs(campus.BORDER_DPID)
    with lab.cut_off("s1"):
        assert wait_for(lambda: not lab.controller.api("GET", "/smtp/v1/switches")[1]["switches"][0]["connected"], 10)
        open_hole(lab)
    lab.controller.wait_installs({campus.BORDER_DPID: before + 1})
    assert blocked_and_allowed(lab) == ["timeout", "open", "open"]
    assert installed_differences(lab, campus.BORDER_DPID, load_policy(lab.controller.policy_file)) == ""


@RESYNC_VARIANTS
def test_controller_restart_resyncs_stale_flows(lab):
    lab.controller.stop(signal.SIGKILL)
    # While the controller is away the switch keeps enforcing (fail-mode secure).
    assert blocked_and_allowed(lab) == ["timeout", "open", "open"]
    open_hole(lab)
    before = {dpid: lab.controller.installs(dpid) for dpid in lab.dpids()}
    lab.controller.start()
    lab.controller.wait_installs({dpid: count + 1 for dpid, count in before.items()})
    assert blocked_and_allowed(lab) == ["timeout", "open", "open"]
    policy = load_policy(lab.controller.policy_file)
    for dpid in lab.dpids():
        assert installed_differences(lab, dpid, policy) == ""


@RESYNC_VARIANTS
def test_restart_opens_no_window(lab):
    """Blocked stays blocked and allowed stays allowed, sampled continuously
    while the controller is killed, restarted and reconciles every switch.
    (Part 1, which s1 alone judges, as in blocked_and_allowed.)"""
    blocked = lab.start_probe_loop("outhost", "h1", 25, seconds=12)
    allowed = lab.start_probe_loop("relay", "outmx", 25, seconds=12)
    time.sleep(1)
    before = {dpid: lab.controller.installs(dpid) for dpid in lab.dpids()}
    lab.controller.stop(signal.SIGKILL)
    time.sleep(1)
    lab.controller.start()
    lab.controller.wait_installs({dpid: count + 1 for dpid, count in before.items()})
    blocked_out = blocked.communicate(timeout=30)[0].decode().split()
    allowed_out = allowed.communicate(timeout=30)[0].decode().split()
    print(f"blocked probe samples: {len(blocked_out)}, allowed probe samples: {len(allowed_out)}")
    assert len(blocked_out) >= 5 and len(allowed_out) >= 20
    assert set(blocked_out) == {"timeout"}
    assert set(allowed_out) == {"open"}


@RESYNC_VARIANTS
def test_switch_restart_is_resynchronised(lab):
    """The border switch is deleted and re-created (its flows gone, fail-mode
    secure): when it reconnects it gets the whole policy again."""
    s1 = lab.net.get("s1")
    before = lab.controller.installs(campus.BORDER_DPID)
    s1.stop(deleteIntfs=False)
    s1.start(lab.net.controllers)
    lab.controller.wait_installs({campus.BORDER_DPID: before + 1})
    assert blocked_and_allowed(lab) == ["timeout", "open", "open"]
    assert blocked_and_allowed(lab, family=6) == ["timeout", "open", "open"]
    assert installed_differences(lab, campus.BORDER_DPID, load_policy(lab.controller.policy_file)) == ""


# -- table budgets (single-table variant; last, as it reconnects s1) ------------


@pytest.mark.parametrize("lab", ["single-table"], indirect=True)
def test_a_change_past_the_switchs_flow_limit_is_refused_whole(lab):
    """s1's table 0 limited to one entry more than it holds (Open vSwitch
    refuses past flow_limit, as a full hardware table does): the switch says
    so in its table features when it reconnects; an exception that needs two
    flows is refused with the numbers, the policy in force stays whole; one
    that needs one flow fits, and is enforced."""
    held = lab.ofctl("dump-flows", "s1").count("cookie=")
    subprocess.run(["ovs-vsctl", "--", "--id=@t", "create", "Flow_Table", f"flow_limit={held + 1}",
                    "overflow_policy=refuse", "--", "set", "bridge", "s1", "flow_tables:0=@t"], check=True)
    try:
        before = lab.controller.installs(campus.BORDER_DPID)
        with lab.cut_off("s1"):
            assert wait_for(lambda: not _status(lab, campus.BORDER_DPID)["connected"], 10)
        lab.controller.wait_installs({campus.BORDER_DPID: before + 1})
        # Its features reply is the same as before, so its first install used the probe it had
        # remembered; the switch is asked again right after, and the new limit is found.
        wanted = {"table": 0, "needed": held, "available": held + 1, "headroom": 1}
        assert wait_for(lambda: _status(lab, campus.BORDER_DPID)["entries"] == wanted, 10), \
            _status(lab, campus.BORDER_DPID)
        assert "its tables changed since its last connection" in lab.controller.log()
        status = _status(lab, campus.BORDER_DPID)
        assert status["pipeline"]["budget_source"] == "table features"
        ip4 = campus.HOST_ADDRESSES["h1"][0]
        code, body = lab.controller.api("POST", "/smtp/v1/exceptions",
                                        {"address": ip4, "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "test: too big"})
        assert code == 409 and body["budget"] == {"dpid": f"{campus.BORDER_DPID:016x}", "name": "border",
                                                  "table": 0, "needed": held + 2, "available": held + 1,
                                                  "budget_from": "table features"}, body
        assert "would need" in body["error"] and ip4 not in str(lab.controller.api("GET", "/smtp/v1/exceptions")[1])
        assert installed_differences(lab, campus.BORDER_DPID, load_policy(lab.controller.policy_file)) == ""
        assert list(lab.run_probes([Probe("outhost", "h1", 25), Probe("outhost", "h1", 2525)]).values()) == [
            "timeout", "open"]
        code, body = lab.controller.api("POST", "/smtp/v1/exceptions",
                                        {"address": ip4, "direction": "inbound", "reason": "test: fits"})
        assert code == 201, body
        try:
            results = lab.run_probes([Probe("outhost", "h1", 25), Probe("outhost", "h2", 25)])
            assert list(results.values()) == ["open", "timeout"]
            assert _status(lab, campus.BORDER_DPID)["entries"]["headroom"] == 0
        finally:
            assert lab.controller.api("DELETE", f"/smtp/v1/exceptions/{body['id']}")[0] == 200
    finally:
        subprocess.run(["ovs-vsctl", "clear", "bridge", "s1", "flow_tables"], check=True)


def _status(lab, dpid):
    return next(s for s in lab.controller.api("GET", "/smtp/v1/switches")[1]["switches"] if s["dpid"] == f"{dpid:016x}")
