"""ryu_apps.wire packs flow mods byte for byte as Ryu's own classes would.

The reference below builds each message the documented Ryu way (OFPFlowMod,
OFPMatch, instruction and action objects) and serialises it; the fast
encoder must give the same bytes for every rule the compiler can emit."""
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ryu.ofproto import ofproto_protocol, ofproto_v1_3

from ryu_apps import openflow, wire
from smtp_border.compiler import compile_switch
from smtp_border.policy import load_policy
from smtp_border.rules import sorted_rules, with_version

from conftest import ROOT
from strategies import NOW, policies

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


@settings(max_examples=300, deadline=None)
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
