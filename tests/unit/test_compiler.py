"""The compiled rules, run through an OpenFlow 1.3 evaluator, decide exactly as
the policy's semantics say, for every role of host, both IP versions and both
kinds of switch."""
import datetime
import itertools
import textwrap

import netaddr
import pytest

from smtp_border.compiler import compile_switch, merged_exception_networks
from smtp_border.policy import PolicyError, load_policy, parse_policy
from smtp_border.rules import (
    CLASSIFY_TABLE,
    Clause,
    FORWARD_TABLE,
    FROM_OUTSIDE,
    Match,
    OWNED_TABLES,
    POLICY_TABLE,
    cookie_clause,
    sorted_rules,
    to_ofctl,
)
from smtp_border.semantics import IP_PROTO_UDP, Packet, is_allowed

from conftest import ROOT
from flowsim import forwards

NOW = datetime.datetime(2026, 11, 27, tzinfo=datetime.timezone.utc)
UTC = datetime.timezone.utc

POLICY = """
campus:
  prefixes: [10.20.0.0/16, 10.30.0.0/24, "fd00:20::/48"]
smtp_ports: [25, 2525]
gateways:
  - name: relay
    addresses: [10.20.0.25, "fd00:20::25"]
exceptions:
  - {address: 10.20.1.5, direction: inbound, reason: a}
  - {address: 10.20.2.0/24, direction: outbound, reason: b}
  - {address: "fd00:20:0:4::/64", direction: both, reason: c}
  - {address: 10.20.3.3, direction: both, reason: d, expires: 2026-01-01T00:00:00Z}
  - {address: 10.20.5.5, direction: outbound, reason: e, expires: 2027-01-01T00:00:00Z}
switches:
  - {dpid: 1, uplinks: [1, 7]}
  - {dpid: 5, uplinks: []}
"""

# One address per role, in and out of every exception and prefix.
ADDRESSES = [
    "10.20.0.25", "10.20.1.5", "10.20.1.6", "10.20.2.9", "10.20.3.3", "10.20.5.5", "10.20.9.9",
    "10.30.0.200", "10.30.1.1", "198.51.100.25", "203.0.113.10",
    "fd00:20::25", "fd00:20:0:4::99", "fd00:20:0:5::1", "fd00:21::1", "2001:db8::25",
]
PORTS = [None, 1, 2, 7]


def policy_of(text):
    return parse_policy(textwrap.dedent(text), "policy.yaml")


def all_packets():
    addresses = [netaddr.IPAddress(a) for a in ADDRESSES]
    for src, dst in itertools.product(addresses, repeat=2):
        if src.version != dst.version:
            continue
        for in_port in (1, 2, 7):
            for dst_port in (25, 2525, 587, 80):
                yield Packet(in_port, src, dst, dst_port=dst_port)
            yield Packet(in_port, src, dst, ip_proto=IP_PROTO_UDP, dst_port=25)


@pytest.mark.parametrize("dpid", [1, 5, 9])
def test_rules_agree_with_semantics_on_every_packet(dpid):
    policy = policy_of(POLICY)
    rules = compile_switch(policy, dpid, NOW)
    disagreements = [
        p for p in all_packets() if forwards(rules, p) != is_allowed(policy, dpid, p, NOW)
    ]
    assert disagreements == []


def test_without_switches_every_switch_enforces_by_address():
    text = POLICY.split("switches:")[0]
    policy = policy_of(text)
    for dpid in (1, 42):
        rules = compile_switch(policy, dpid, NOW)
        assert all(r.match.in_port is None for r in rules)
        assert [p for p in all_packets() if forwards(rules, p) != is_allowed(policy, dpid, p, NOW)] == []


def test_shipped_policy_agrees_with_semantics():
    policy = load_policy(ROOT / "policy.yaml")
    for dpid in (1, 2, 3):
        rules = compile_switch(policy, dpid, NOW)
        assert [p for p in all_packets() if forwards(rules, p) != is_allowed(policy, dpid, p, NOW)] == []


def decision(policy, dpid, in_port, src, dst, port=25):
    rules = compile_switch(policy, dpid, NOW)
    return forwards(rules, Packet(in_port, netaddr.IPAddress(src), netaddr.IPAddress(dst), dst_port=port))


def test_the_clauses_one_by_one():
    policy = policy_of(POLICY)
    inside, uplink = 2, 1
    outside_server, outside_client = "198.51.100.25", "203.0.113.10"
    # Part 2: campus to outside
    assert not decision(policy, 1, inside, "10.20.9.9", outside_server)
    assert decision(policy, 1, inside, "10.20.9.9", outside_server, port=587)
    assert decision(policy, 1, inside, "10.20.0.25", outside_server)  # gateway
    assert decision(policy, 1, inside, "10.20.2.9", outside_server)  # outbound exception network
    assert not decision(policy, 1, inside, "10.20.1.5", outside_server)  # inbound-only
    assert not decision(policy, 1, inside, "10.20.3.3", outside_server)  # expired
    assert decision(policy, 1, inside, "10.20.5.5", outside_server)  # not yet expired
    # Part 1: outside to campus
    assert not decision(policy, 1, uplink, outside_client, "10.20.9.9")
    assert decision(policy, 1, uplink, outside_client, "10.20.9.9", port=80)
    assert decision(policy, 1, uplink, outside_client, "10.20.0.25")  # gateway
    assert decision(policy, 1, uplink, outside_client, "10.20.1.5")  # inbound exception
    assert not decision(policy, 1, uplink, outside_client, "10.20.2.9")  # outbound-only
    assert not decision(policy, 1, 7, outside_client, "10.20.9.9")  # second uplink
    # campus to campus, and a forged campus source on an uplink
    assert decision(policy, 1, inside, "10.20.9.9", "10.30.0.200")
    assert not decision(policy, 1, uplink, "10.20.9.9", "10.30.0.200")
    assert decision(policy, 1, uplink, "10.20.9.9", "10.20.1.5")  # ...but an exception is an exception
    # IPv6, a 'both' network
    assert decision(policy, 1, inside, "fd00:20:0:4::99", "2001:db8::25")
    assert decision(policy, 1, uplink, "2001:db8::25", "fd00:20:0:4::99")
    assert not decision(policy, 1, uplink, "2001:db8::25", "fd00:20:0:5::1")
    # transit: neither end on campus
    assert decision(policy, 1, uplink, outside_client, outside_server)
    # inside switch
    assert decision(policy, 9, 2, "10.20.9.9", outside_server)


def test_inside_switch_only_forwards():
    rules = compile_switch(policy_of(POLICY), 9, NOW)
    assert {r.clause for r in rules} == {Clause.NOT_SMTP, Clause.FORWARD}


def test_expired_exception_leaves_no_flow():
    policy = policy_of(POLICY)
    before = compile_switch(policy, 1, datetime.datetime(2025, 1, 1, tzinfo=UTC))
    after = compile_switch(policy, 1, NOW)
    dropped = {r.match.ip_src or r.match.ip_dst for r in before - after}
    assert dropped == {netaddr.IPNetwork("10.20.3.3/32")}


def test_family_without_campus_prefix_has_no_rules():
    policy = policy_of("campus: {prefixes: [10.0.0.0/8]}\n")
    rules = compile_switch(policy, 1, NOW)
    # IPv6 only in the drops of what the switch cannot classify, which hold whatever the campus.
    assert all(r.match.eth_type != 0x86DD for r in rules if r.clause != Clause.UNCLASSIFIABLE)
    packet = Packet(2, netaddr.IPAddress("2001:db8::1"), netaddr.IPAddress("2001:db8::2"), dst_port=25)
    assert forwards(rules, packet)


def test_adjacent_exceptions_merge_without_widening():
    policy = policy_of(
        """
        campus: {prefixes: [10.20.0.0/16]}
        exceptions:
          - {address: 10.20.4.0, direction: outbound, reason: a}
          - {address: 10.20.4.1, direction: both, reason: b}
          - {address: 10.20.4.2/31, direction: outbound, reason: c}
          - {address: 10.20.4.5, direction: outbound, reason: d}
        """
    )
    assert merged_exception_networks(policy.exceptions, inbound=False) == [
        netaddr.IPNetwork("10.20.4.0/30"),
        netaddr.IPNetwork("10.20.4.5/32"),
    ]
    assert merged_exception_networks(policy.exceptions, inbound=True) == [netaddr.IPNetwork("10.20.4.1/32")]
    rules = compile_switch(policy, 1, NOW)
    outbound = [r for r in rules if r.clause == Clause.EXCEPTION_OUTBOUND]
    assert len(outbound) == 2


def test_flow_count_grows_by_one_per_exception_direction():
    base = "campus: {prefixes: [10.20.0.0/16]}\nexceptions:\n"
    entries = "".join(f"  - {{address: 10.20.{i}.1, direction: both, reason: r}}\n" for i in range(0, 200, 2))
    small = compile_switch(policy_of(base + entries.split("\n")[0] + "\n"), 1, NOW)
    large = compile_switch(policy_of(base + entries), 1, NOW)
    assert len(large) - len(small) == 2 * 99


def test_rules_are_well_formed():
    policy = policy_of(POLICY)
    rules = compile_switch(policy, 1, NOW)
    assert {r.table for r in rules} == set(OWNED_TABLES)
    assert len({r.key for r in rules}) == len(rules), "two rules share table, priority and match"
    for rule in rules:
        assert cookie_clause(rule.cookie) is not None
        if rule.table == CLASSIFY_TABLE and rule.match.tcp_dst is not None:
            if rule.clause == Clause.UNCLASSIFIABLE:
                assert rule.match.tcp_dst == 0 and rule.instructions.drops
            else:
                assert rule.instructions.goto_table == POLICY_TABLE
        if rule.table == FORWARD_TABLE:
            assert rule.instructions.output_normal
    # every table has a lowest-priority catch-all, so no packet hits a table
    # miss; the policy table's catches what reaches it unjudged: outside to outside
    catch_all = {CLASSIFY_TABLE: Match(), POLICY_TABLE: Match(metadata=FROM_OUTSIDE), FORWARD_TABLE: Match()}
    for table in OWNED_TABLES:
        assert any(r.table == table and r.priority == 0 and r.match == catch_all[table] for r in rules)


def test_ofctl_rendering():
    rules = sorted_rules(compile_switch(load_policy(ROOT / "policy.yaml"), 1, NOW))
    lines = [to_ofctl(r) for r in rules]
    assert lines[0].startswith("cookie=0x534d23")
    assert any(l.endswith(",table=0,priority=400,dl_type=0x0800,nw_proto=6,tp_dst=0,nw_frag=not_later actions=drop")
               for l in lines)
    assert any(l.endswith(",table=0,priority=400,dl_type=0x8100 actions=drop") for l in lines)
    uplink = next(l for l in lines if l.startswith("cookie=0x534d02"))
    assert uplink.endswith("table=0,priority=300,in_port=1,dl_type=0x0800,nw_proto=6,tp_dst=25 actions=write_metadata:0x2/0x7,goto_table:1")
    assert any(l.endswith("table=2,priority=0 actions=NORMAL") for l in lines)
    assert any("ipv6_dst=fd00:20:0:1::5 actions=goto_table:2" in l for l in lines)
    assert any("metadata=0x1/0x7,dl_type=0x0800 actions=meter:2,CONTROLLER:128" in l for l in lines)


def test_blocked_flows_are_sampled_unless_sampling_is_off():
    sampled = compile_switch(policy_of(POLICY), 1, NOW)
    quiet = compile_switch(policy_of(POLICY + "audit: {sample_rate: 0}\n"), 1, NOW)
    blocks = (Clause.PART1_BLOCK, Clause.PART2_BLOCK)
    # Part 1 samples through meter 1, Part 2 through meter 2: one direction cannot starve the other.
    assert {(r.clause, r.instructions.sample_meter) for r in sampled if r.clause in blocks} == {
        (Clause.PART1_BLOCK, 1), (Clause.PART2_BLOCK, 2)}
    assert {r.instructions.sample_meter for r in quiet if r.clause in blocks} == {None}
    assert all(r.instructions.sample_meter is None for r in sampled if r.clause not in blocks)
    assert {r.key for r in sampled} == {r.key for r in quiet}


def test_flow_dump_in_the_docs_is_the_shipped_policy():
    """docs/flow-tables.md shows a real dump of the border switch; it must
    still be what the shipped policy compiles to."""
    import re

    text = (ROOT / "docs" / "flow-tables.md").read_text()
    dump = text.split("OFPST_FLOW reply", 1)[1].split("```", 1)[0]
    documented = sorted(re.findall(r"cookie=(0x[0-9a-f]+), duration=[^,]+, table=(\d+),.* priority=(\d+)", dump))
    compiled = sorted(
        (f"{r.cookie:#x}", str(r.table), str(r.priority))
        for r in compile_switch(load_policy(ROOT / "policy.yaml"), 1, NOW)
    )
    assert documented == compiled


BY_PORT = """
campus: {prefixes: [10.20.0.0/16]}
gateways: [{name: relay, addresses: [10.20.0.25]}]
switches:
  - {dpid: 1, uplinks: [1]}
  - {dpid: 2, access: true}
  - {dpid: 3, uplinks: []}
"""


def test_part2_holds_by_port_whatever_the_source_address():
    """A packet from a campus-side port is from the campus on a switch whose
    uplinks are known (1) and on an access switch (2), whatever its source:
    a NAT pool, a documentation address, an unlisted or link-local IPv6
    address (and this campus lists no IPv6 prefix at all). Its twin on port
    80 passes. By addresses alone (3) such a source is outside: transit, the
    blind spot docs/policy.md names."""
    policy = policy_of(BY_PORT)
    outside4, outside6 = netaddr.IPAddress("198.51.100.25"), netaddr.IPAddress("2001:db8:100::25")
    sources = [("100.64.1.1", outside4), ("192.0.2.77", outside4), ("fd00:77::77", outside6), ("fe80::1", outside6)]
    for dpid, held in ((1, True), (2, True), (3, False)):
        rules = compile_switch(policy, dpid, NOW)
        for source, destination in sources:
            smtp = Packet(in_port=2, src=netaddr.IPAddress(source), dst=destination, dst_port=25)
            twin = Packet(in_port=2, src=netaddr.IPAddress(source), dst=destination, dst_port=80)
            assert forwards(rules, smtp) == is_allowed(policy, dpid, smtp, NOW) == (not held), (dpid, source)
            assert forwards(rules, twin) and is_allowed(policy, dpid, twin, NOW)
    # The relay still sends, and on the uplink a campus source is still outside.
    for dpid in (1, 2):
        relay = Packet(in_port=2, src=netaddr.IPAddress("10.20.0.25"), dst=outside4, dst_port=25)
        assert forwards(compile_switch(policy, dpid, NOW), relay)
    forged = Packet(in_port=1, src=netaddr.IPAddress("10.20.3.3"), dst=netaddr.IPAddress("10.20.4.4"), dst_port=25)
    assert not forwards(compile_switch(policy, 1, NOW), forged)


def test_an_access_switch_cannot_have_uplinks():
    with pytest.raises(PolicyError, match=r"switches\[0\]\.access: an access switch has every port on the campus side"):
        policy_of("campus: {prefixes: [10.20.0.0/16]}\nswitches: [{dpid: 1, uplinks: [1], access: true}]\n")
