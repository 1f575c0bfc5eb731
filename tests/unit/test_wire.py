"""ryu_apps.wire packs flow mods byte for byte as Ryu's own classes would.

The reference below builds each message the documented Ryu way (OFPFlowMod,
OFPMatch, instruction and action objects) and serialises it; the fast
encoder must give the same bytes for every rule the compiler can emit."""
from hypothesis import given, settings
from hypothesis import strategies as st
from ryu.ofproto import ofproto_protocol, ofproto_v1_3

from ryu_apps import openflow, wire
from smtp_border.compiler import compile_switch
from smtp_border.policy import load_policy
from smtp_border.rules import with_version

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
