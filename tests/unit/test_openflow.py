"""The Ryu layer spells compiled rules as OpenFlow 1.3 messages faithfully."""
import struct

import netaddr
from ryu_apps.framework import ofproto_parser, ofproto_protocol, ofproto_v1_3

from ryu_apps import openflow, wire
from smtp_border.compiler import compile_switch
from smtp_border.policy import load_policy
from smtp_border.diff import diff_rules
from smtp_border.rules import METADATA_MASK, sorted_rules, with_version

import fakeswitch
from conftest import ROOT

DP = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)


def roundtrip(msg):
    """What Ryu's parser (as a switch would) reads from the bytes we send."""
    msg.set_xid(7)
    msg.serialize()
    version, msg_type, msg_len, xid = ofproto_parser.header(msg.buf)
    return ofproto_parser.msg(DP, version, msg_type, msg_len, xid, bytes(msg.buf))


def expected_fields(match):
    fields = {}
    for name in ("in_port", "eth_type", "ip_proto", "tcp_dst"):
        if getattr(match, name) is not None:
            fields[name] = getattr(match, name)
    if match.metadata is not None:
        fields["metadata"] = (match.metadata, METADATA_MASK)
    if match.ip_frag is not None:
        fields["ip_frag"] = match.ip_frag.value  # (value, mask): Nicira's nw_frag
    for side, network in (("src", match.ip_src), ("dst", match.ip_dst)):
        if network is not None:
            family = "ipv4" if network.version == 4 else "ipv6"
            fields[f"{family}_{side}"] = str(network.ip) if network.size == 1 else (str(network.ip), str(network.netmask))
    return fields


def normalise(fields):
    # Ryu gives back IPv6 in its own spelling; compare addresses, not text.
    out = {}
    for name, value in fields.items():
        if isinstance(value, tuple) and name.startswith(("ipv4", "ipv6")):
            value = (str(netaddr.IPAddress(value[0])), str(netaddr.IPAddress(value[1])))
        elif name.startswith(("ipv4", "ipv6")):
            value = str(netaddr.IPAddress(value))
        out[name] = value
    return out


def test_every_rule_survives_serialisation():
    rules = compile_switch(load_policy(ROOT / "policy.yaml"), 1)
    for rule in rules:
        parsed = roundtrip(wire.add_flow(rule))
        assert parsed.cookie == rule.cookie
        assert (parsed.table_id, parsed.priority) == (rule.table, rule.priority)
        assert (parsed.idle_timeout, parsed.hard_timeout) == (0, 0)
        got = normalise(dict(parsed.match.items()))
        want = normalise(expected_fields(rule.match))
        assert got == want, rule
        kinds = [type(i).__name__ for i in parsed.instructions]
        ins = rule.instructions
        assert ("OFPInstructionGotoTable" in kinds) == (ins.goto_table is not None)
        assert ("OFPInstructionWriteMetadata" in kinds) == (ins.write_metadata is not None)
        assert ("OFPInstructionActions" in kinds) == (ins.output_normal or ins.sample_meter is not None)
        assert ("OFPInstructionMeter" in kinds) == (ins.sample_meter is not None)
        if ins.drops and ins.sample_meter is not None:
            # A sampled drop goes nowhere but, through the meter, to the controller.
            outputs = [a for i in parsed.instructions for a in getattr(i, "actions", [])]
            assert [(a.port, a.max_len) for a in outputs] == [(DP.ofproto.OFPP_CONTROLLER, 128)]
            meter = next(i for i in parsed.instructions if type(i).__name__ == "OFPInstructionMeter")
            assert meter.meter_id == ins.sample_meter in (1, 2)


def test_what_a_switch_reports_reads_back_as_the_rule_that_made_it():
    """The reconciler compares a switch with its desired flows through
    rule_from_flow: every flow the compiler makes must read back as itself,
    and anything else (other fields, masks, actions) as not ours."""
    policy = load_policy(ROOT / "policy.yaml")
    rules = compile_switch(policy, 1) | {with_version(r, 1) for r in compile_switch(policy, 1)}
    for rule in rules:
        assert openflow.rule_from_flow(stats_of(roundtrip(wire.add_flow(rule)))) == rule
    parser, ofp = DP.ofproto_parser, DP.ofproto
    goto = [parser.OFPInstructionGotoTable(2)]
    foreign = [
        (parser.OFPMatch(eth_type=0x800, ipv4_src="10.0.0.1", udp_dst=53), goto),
        (parser.OFPMatch(metadata=(1, 0x3)), goto),
        (parser.OFPMatch(eth_type=0x800, ipv4_dst=("10.0.0.0", "255.0.255.0")), goto),
        (parser.OFPMatch(), [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(3)])]),
        (parser.OFPMatch(), [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, 128)])]),
        (parser.OFPMatch(), [parser.OFPInstructionWriteMetadata(1, 0xff), parser.OFPInstructionGotoTable(1)]),
    ]
    for match, instructions in foreign:
        flow = parser.OFPFlowMod(DP, table_id=1, priority=5, match=match, instructions=instructions)
        assert openflow.rule_from_flow(stats_of(roundtrip(flow))) is None, match


def stats_of(flow_mod):
    return DP.ofproto_parser.OFPFlowStats(
        table_id=flow_mod.table_id, priority=flow_mod.priority, cookie=flow_mod.cookie,
        match=flow_mod.match, instructions=flow_mod.instructions,
    )


def test_a_full_install_rides_in_one_bundle():
    rules = compile_switch(load_policy(ROOT / "policy.yaml"), 1)
    mods = openflow.apply_diff(diff_rules(set(), rules))
    parsed = [roundtrip(m) for m in mods]
    assert all(m.command == DP.ofproto.OFPFC_ADD for m in parsed)
    assert len(parsed) == len(rules)
    wrapped = [roundtrip(m) for m in openflow.bundle(DP, 9, mods)]
    ofp = DP.ofproto
    # Ryu reads ONF bundle messages back only as experimenter messages.
    assert {(m.experimenter, m.exp_type) for m in wrapped[1:-1]} == {(0x4F4E4600, ofp.ONF_ET_BUNDLE_ADD_MESSAGE)}
    bodies = [struct.unpack("!IxxH", m.data[:8]) + (m.data[8:],) for m in wrapped[1:-1]]
    assert wrapped[0].type == ofp.ONF_BCT_OPEN_REQUEST and wrapped[-1].type == ofp.ONF_BCT_COMMIT_REQUEST
    assert {m.bundle_id for m in (wrapped[0], wrapped[-1])} | {b[0] for b in bodies} == {9}
    flags = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
    assert {m.flags for m in (wrapped[0], wrapped[-1])} | {b[1] for b in bodies} == {flags}
    inner = [ofproto_parser.msg(DP, *ofproto_parser.header(b[2]), b[2]) for b in bodies]
    # Each flow mod rides in the bundle unchanged, with the outer message's xid.
    assert [str(m) for m in inner] == [str(m) for m in parsed]


def test_error_description_names_type_code_and_offending_message():
    rule = next(iter(compile_switch(load_policy(ROOT / "policy.yaml"), 1)))
    flow_mod = wire.add_flow(rule)
    flow_mod.set_xid(42)
    flow_mod.serialize()
    ofp = DP.ofproto
    error = DP.ofproto_parser.OFPErrorMsg(DP, type_=ofp.OFPET_BAD_MATCH, code=ofp.OFPBMC_BAD_PREREQ, data=bytes(flow_mod.buf))
    error.xid = 42
    text = openflow.describe_error(DP, error)
    assert text.startswith("type=OFPET_BAD_MATCH code=OFPBMC_BAD_PREREQ xid=42 offending=version=0x4,msg_type=0xe,")
    assert "OFPFlowMod(" in text and f"cookie={rule.cookie}" in text
    truncated = DP.ofproto_parser.OFPErrorMsg(DP, type_=ofp.OFPET_BAD_REQUEST, code=ofp.OFPBRC_BAD_TYPE, data=b"\x04\x0e\x00")
    truncated.xid = 1
    assert openflow.describe_error(DP, truncated) == "type=OFPET_BAD_REQUEST code=OFPBRC_BAD_TYPE xid=1 offending=0x040e00"


def test_flow_stats_replies_reach_the_app_as_bytes_and_other_apps_as_ryus_objects():
    """install_flow_stats_reader: a flow-stats reply's body keeps the
    switch's bytes (read by ryu_apps.wire), reads as Ryu's OFPFlowStats for
    any other app, an empty one included; other replies are parsed as before."""
    import struct

    openflow.install_flow_stats_reader()
    openflow.install_flow_stats_reader()  # idempotent
    ofp = DP.ofproto
    rules = sorted_rules(compile_switch(load_policy(ROOT / "policy.yaml"), 1))
    entries = b"".join(fakeswitch._stats_bytes(fakeswitch._stats_of(roundtrip(wire.add_flow(r)))) for r in rules)

    def reply(kind, body, xid=5):
        data = struct.pack("!BBHIHH4x", 4, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), xid, kind, 1) + body
        return ofproto_parser.msg(DP, 4, ofp.OFPT_MULTIPART_REPLY, len(data), xid, data)

    full = reply(ofp.OFPMP_FLOW, entries)
    assert type(full).__name__ == "OFPFlowStatsReply" and (full.flags, full.xid) == (1, 5)
    assert [e.rule for e in full.body.entries()] == rules
    assert [openflow.rule_from_flow(s) for s in full.body] == rules  # what another app would see
    empty = reply(ofp.OFPMP_FLOW, b"")
    assert list(empty.body) == [] and empty.body.entries() == []
    aggregate = reply(ofp.OFPMP_AGGREGATE, struct.pack("!QQI4x", 1, 2, 3))
    assert aggregate.body.flow_count == 3
