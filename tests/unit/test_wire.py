"""ryu_apps.wire packs flow mods byte for byte as Ryu's own classes would.

The reference below builds each message the documented Ryu way (OFPFlowMod,
OFPMatch, instruction and action objects) and serialises it; the fast
encoder must give the same bytes for every rule the compiler can emit."""
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ryu_apps.framework import ofproto_protocol, ofproto_v1_3

from ryu_apps import openflow, wire
from smtp_border.compiler import compile_switch
from smtp_border.policy import load_policy
from smtp_border import rules as rules_module
from smtp_border.rules import sorted_rules, with_version

import fakeswitch
from conftest import ROOT
from strategies import NOW, policies, examples

DP = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
OFP, PARSER = DP.ofproto, DP.ofproto_parser


def ryu_add(rule):
    return PARSER.OFPFlowMod(
        DP, cookie=rule.cookie, table_id=rule.table, command=OFP.OFPFC_ADD, priority=rule.priority,
        match=openflow.match_of(PARSER, rule.match), instructions=openflow.instructions_of(DP, rule.instructions),
    )


def ryu_delete(rule):
    return PARSER.OFPFlowMod(
        DP, table_id=rule.table, command=OFP.OFPFC_DELETE_STRICT, priority=rule.priority,
        out_port=OFP.OFPP_ANY, out_group=OFP.OFPG_ANY, match=openflow.match_of(PARSER, rule.match),
    )


def wire_bytes(msg, xid):
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def assert_same_bytes(rules, xid=0x01020304):
    assert rules
    for rule in rules:
        assert wire_bytes(wire.add_flow(rule), xid) == wire_bytes(ryu_add(rule), xid), rule
        assert wire_bytes(wire.delete_flow(rule), xid) == wire_bytes(ryu_delete(rule), xid), rule


def test_shipped_policy_on_every_switch():
    policy = load_policy(ROOT / "policy.yaml")
    for dpid in [s.dpid for s in policy.switches] + [0xFFFF]:
        assert_same_bytes(compile_switch(policy, dpid))


@settings(max_examples=examples(300), deadline=None)
@given(policy=policies(), dpid=st.integers(1, 4))
def test_random_policies(policy, dpid):
    # IPv4 and IPv6, hosts and networks, both directions, sampled drops or
    # plain ones, uplinks or none: every shape of match and instruction.
    rules = compile_switch(policy, dpid, NOW)
    assert_same_bytes(rules | {with_version(r, 1) for r in rules})


@given(xid=st.integers(0, 0xFFFFFFFF), bundle_id=st.integers(0, 0xFFFFFFFF))
def test_bundle_add_carries_the_outer_xid_inside(xid, bundle_id):
    rule = max(compile_switch(load_policy(ROOT / "policy.yaml"), 1), key=lambda r: r.cookie)
    flags = OFP.ONF_BF_ATOMIC | OFP.ONF_BF_ORDERED
    ours = wire.BundleAdd(bundle_id, flags, wire.add_flow(rule))
    reference = PARSER.ONFBundleAddMsg(DP, bundle_id, flags, ryu_add(rule), [])
    assert wire_bytes(ours, xid) == wire_bytes(reference, xid)


def test_the_declared_field_order_is_ryus_except_for_nicira_fields():
    """Ryu sorts OpenFlow-basic fields by number, as MATCH_FIELDS lists them;
    only the Nicira ip_frag differs (Ryu would put it first)."""
    for rule in compile_switch(load_policy(ROOT / "policy.yaml"), 1):
        declared = openflow.match_of(PARSER, rule.match)
        ryu_sorted = PARSER.OFPMatch(**dict(declared.items()))
        buffers = []
        for match in (declared, ryu_sorted):
            buf = bytearray()
            match.serialize(buf, 0)
            buffers.append(bytes(buf))
        assert (buffers[0] == buffers[1]) == (rule.match.ip_frag is None), rule


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs Open vSwitch's ovs-ofctl")
def test_open_vswitch_decodes_every_flow_mod_we_send(tmp_path):
    """ovs-ofctl decodes our bytes with Open vSwitch's own parser, which
    checks each field's prerequisites in order (OFPBMC_BAD_PREREQ otherwise)."""
    rules = sorted_rules(compile_switch(load_policy(ROOT / "policy.yaml"), 1))
    data = b"".join(wire_bytes(make(rule), n) for n, rule in enumerate(rules) for make in (wire.add_flow, wire.delete_flow))
    (tmp_path / "flow_mods").write_bytes(data)
    text = subprocess.run(["ovs-ofctl", "ofp-parse", str(tmp_path / "flow_mods")],
                          capture_output=True, text=True, check=True).stdout
    assert "error" not in text
    decoded = [line for line in text.splitlines() if line.startswith("OFPT_FLOW_MOD")]
    assert len(decoded) == 2 * len(rules)
    assert any("nw_frag=not_later" in line for line in decoded)


# -- reading flows back: wire.flow_entries against Ryu's parser ------------------

def reported(flow_mod, idle=0, packets=0):
    """The ofp_flow_stats entry a switch reports for a flow mod, serialised
    by Ryu's own classes (tests/fakeswitch.py) from Ryu's parse of it."""
    flow_mod.set_xid(1)
    flow_mod.serialize()
    parsed = PARSER.OFPFlowMod.parser(DP, OFP.OFP_VERSION, OFP.OFPT_FLOW_MOD, len(flow_mod.buf), 1, bytes(flow_mod.buf))
    stats = fakeswitch._stats_of(parsed)
    stats.idle_timeout, stats.packet_count = idle, packets
    return fakeswitch._stats_bytes(stats)


def read_both(data):
    """(our FlowEntries, Ryu's OFPFlowStats) for the same reply body."""
    ryu, offset = [], 0
    while offset < len(data):
        stats = PARSER.OFPFlowStats.parser(data, offset)
        ryu.append(stats)
        offset += stats.length
    return wire.flow_entries(data), ryu


@settings(max_examples=examples(200), deadline=None)
@given(policy=policies(), dpid=st.integers(1, 4))
def test_every_flow_the_app_installs_reads_back_as_itself_as_through_ryu(policy, dpid):
    rules = compile_switch(policy, dpid, NOW)
    rules = sorted_rules(rules | {with_version(r, 1) for r in rules})
    ours, ryu = read_both(b"".join(reported(wire.add_flow(r), packets=n) for n, r in enumerate(rules)))
    assert [e.rule for e in ours] == rules == [openflow.rule_from_flow(s) for s in ryu]
    assert [e.key for e in ours] == [r.key for r in rules]
    assert [(e.table_id, e.priority, e.cookie, e.packet_count) for e in ours] == [
        (s.table_id, s.priority, s.cookie, s.packet_count) for s in ryu]


def test_flows_the_app_would_not_install_read_as_foreign_as_through_ryu():
    goto = [PARSER.OFPInstructionGotoTable(2)]
    output = [PARSER.OFPInstructionActions(OFP.OFPIT_APPLY_ACTIONS, [PARSER.OFPActionOutput(3)])]
    foreign = [
        (PARSER.OFPMatch(eth_type=0x800, ipv4_src="10.0.0.1", udp_dst=53), goto),
        (PARSER.OFPMatch(metadata=(1, 0x3)), goto),
        (PARSER.OFPMatch(eth_type=0x800, ipv4_dst=("10.0.0.0", "255.0.255.0")), goto),
        (PARSER.OFPMatch(), output),
        (PARSER.OFPMatch(), [PARSER.OFPInstructionActions(OFP.OFPIT_APPLY_ACTIONS,
                                                          [PARSER.OFPActionOutput(OFP.OFPP_CONTROLLER, 128)])]),
        (PARSER.OFPMatch(), [PARSER.OFPInstructionWriteMetadata(1, 0xff), PARSER.OFPInstructionGotoTable(1)]),
        (PARSER.OFPMatch(eth_type=0x800, ip_proto=6, tcp_dst=25), output),  # our match, other actions
        (PARSER.OFPMatch(eth_dst="00:00:00:00:00:01"), goto),
    ]
    flows = [PARSER.OFPFlowMod(DP, table_id=1, priority=5, match=m, instructions=i) for m, i in foreign]
    data = b"".join(reported(f) for f in flows)
    ours, ryu = read_both(data)
    assert [e.rule for e in ours] == [None] * len(foreign) == [openflow.rule_from_flow(s) for s in ryu]
    # Where the match is one the app uses, the key is a FlowRule's: an add in its place replaces it.
    assert ours[-2].key == (1, 5, rules_module.Match(eth_type=0x800, ip_proto=6, tcp_dst=25))
    assert ours[0].key[0] == "foreign"
    # A flow of the app's shape with a timeout is not one it installed.
    rule = max(compile_switch(load_policy(ROOT / "policy.yaml"), 1), key=lambda r: r.cookie)
    timed, ryu_timed = read_both(reported(wire.add_flow(rule), idle=30))
    assert timed[0].rule is None is openflow.rule_from_flow(ryu_timed[0]) and timed[0].key == rule.key


def test_a_foreign_flow_is_deleted_by_the_match_it_was_reported_with():
    flow = PARSER.OFPFlowMod(DP, table_id=1, priority=5, match=PARSER.OFPMatch(eth_type=0x800, ipv4_src="10.0.0.1"),
                             instructions=[PARSER.OFPInstructionGotoTable(2)])
    entry = wire.flow_entries(reported(flow))[0]
    deletion = wire_bytes(wire.delete_by_match(entry.table_id, entry.priority, entry.match), 7)
    reference = PARSER.OFPFlowMod(DP, table_id=1, command=OFP.OFPFC_DELETE_STRICT, priority=5, out_port=OFP.OFPP_ANY,
                                  out_group=OFP.OFPG_ANY, match=PARSER.OFPMatch(eth_type=0x800, ipv4_src="10.0.0.1"))
    assert deletion == wire_bytes(reference, 7)
