"""Translate abstract FlowRules into Ryu OpenFlow 1.3 messages.

Nothing here decides policy; it only spells rules as OpenFlow (flow mods
through ryu_apps.wire, everything else through Ryu's parser) and wraps a
change in an ONF bundle (the OpenFlow 1.3 extension that Open
vSwitch implements) so that a switch applies it all at once or not at all.
"""
import netaddr
from ryu.ofproto import ofproto_parser
from ryu.ofproto.ofproto_v1_3 import OFPP_CONTROLLER

from ryu_apps import wire
from smtp_border.rules import METADATA_MASK, OWNED_TABLES, SAMPLE_BYTES


def match_of(parser, match):
    fields = {}
    if match.in_port is not None:
        fields["in_port"] = match.in_port
    if match.metadata is not None:
        fields["metadata"] = (match.metadata, METADATA_MASK)
    if match.eth_type is not None:
        fields["eth_type"] = match.eth_type
    if match.ip_proto is not None:
        fields["ip_proto"] = match.ip_proto
    if match.tcp_dst is not None:
        fields["tcp_dst"] = match.tcp_dst
    for name, network in (("src", match.ip_src), ("dst", match.ip_dst)):
        if network is not None:
            family = "ipv4" if network.version == 4 else "ipv6"
            # A host is an exact match; only a real network needs a mask.
            fields[f"{family}_{name}"] = str(network.ip) if network.size == 1 else (str(network.ip), str(network.netmask))
    return parser.OFPMatch(**fields)


def instructions_of(datapath, instructions):
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    result = []
    if instructions.sample_meter is not None:
        result.append(parser.OFPInstructionMeter(instructions.sample_meter))
        actions = [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, SAMPLE_BYTES)]
        result.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if instructions.output_normal:
        actions = [parser.OFPActionOutput(ofp.OFPP_NORMAL)]
        result.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if instructions.write_metadata is not None:
        result.append(parser.OFPInstructionWriteMetadata(instructions.write_metadata, METADATA_MASK))
    if instructions.goto_table is not None:
        result.append(parser.OFPInstructionGotoTable(instructions.goto_table))
    return result


def set_meter(datapath, meter_id, rate, command):
    """A packets-per-second meter whose one band drops what exceeds `rate`."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    band = parser.OFPMeterBandDrop(rate=rate, burst_size=rate)
    return parser.OFPMeterMod(
        datapath, command=command, flags=ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS,
        meter_id=meter_id, bands=[band],
    )


def delete_reported_flow(datapath, stats):
    """Delete exactly the flow a switch reported in an OFPFlowStats."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    return parser.OFPFlowMod(
        datapath, table_id=stats.table_id, command=ofp.OFPFC_DELETE_STRICT, priority=stats.priority,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=stats.match,
    )


def apply_diff(diff):
    """Flow mods for a RuleDiff, adds before deletes.

    Inside a bundle the order does not matter. Without one, this order passes
    through the union of old and new flows, which blocks whatever both block
    and allows whatever both allow: every allow flow sits above every drop
    flow in the policy table."""
    return [wire.add_flow(r) for r in diff.add] + [wire.delete_flow(r) for r in diff.delete]


def replace_all(rules):
    """Flow mods that leave the owned tables holding exactly `rules`.

    Deleting and re-adding is only safe inside an atomic bundle; see bundle()."""
    return [wire.delete_table(table) for table in OWNED_TABLES] + [wire.add_flow(rule) for rule in rules]


def bundle(datapath, bundle_id, messages):
    """Wrap flow mods in one atomic, ordered ONF bundle: open, add..., commit."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    flags = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
    wrapped = [parser.ONFBundleCtrlMsg(datapath, bundle_id, ofp.ONF_BCT_OPEN_REQUEST, flags, [])]
    wrapped.extend(wire.BundleAdd(bundle_id, flags, m) for m in messages)
    wrapped.append(parser.ONFBundleCtrlMsg(datapath, bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, flags, []))
    return wrapped


def flow_key(table_id, priority, match):
    """What identifies a flow entry on a switch, comparable between what a
    switch reports (OFPFlowStats) and what we send."""
    return (table_id, priority, _match_signature(match))


def flow_signature(table_id, priority, cookie, match, instructions):
    """A flow's key, cookie and instructions, comparable the same way."""
    return flow_key(table_id, priority, match) + (cookie, tuple(_instruction_signature(i) for i in instructions))


def expected_signature(datapath, rule):
    return flow_signature(
        rule.table, rule.priority, rule.cookie,
        match_of(datapath.ofproto_parser, rule.match), instructions_of(datapath, rule.instructions),
    )


def _match_signature(match):
    fields = []
    for name, value in match.items():
        if name.startswith(("ipv4_", "ipv6_")):
            address, mask = value if isinstance(value, tuple) else (value, None)
            address = str(netaddr.IPAddress(address))
            # An all-ones mask is an exact match however a switch spells it.
            if mask is not None and netaddr.IPAddress(mask).bits().count("0") == 0:
                mask = None
            value = (address, None if mask is None else str(netaddr.IPAddress(mask)))
        fields.append((name, value))
    return tuple(sorted(fields, key=repr))


def _instruction_signature(instruction):
    kind = type(instruction).__name__
    if hasattr(instruction, "table_id"):
        return (kind, instruction.table_id)
    if hasattr(instruction, "metadata"):
        return (kind, instruction.metadata, instruction.metadata_mask)
    if hasattr(instruction, "meter_id"):
        return (kind, instruction.meter_id)
    # max_len only means something for output to the controller.
    actions = tuple(
        (type(a).__name__, getattr(a, "port", None), a.max_len if getattr(a, "port", None) == OFPP_CONTROLLER else None)
        for a in getattr(instruction, "actions", [])
    )
    return (kind, actions)


def describe_error(datapath, error):
    """One line for an OFPErrorMsg: its type and code by name, and the message
    that caused it, decoded where the switch sent enough of it back."""
    ofp = datapath.ofproto
    type_name = _constant_name(ofp, "OFPET_", error.type)
    code_name = _error_code_name(ofp, type_name, error.code)
    offending = "0x" + bytes(error.data[:64]).hex()  # truncated or unparsable: the hex still helps
    try:
        version, msg_type, msg_len, xid = ofproto_parser.header(error.data)
        # Ryu parses only some message types (and logs a traceback for the
        # others), so ask it only about those it knows.
        if msg_type in getattr(datapath.ofproto_parser, "_MSG_PARSERS", {}):
            offending = ofproto_parser.msg(datapath, version, msg_type, msg_len, xid, error.data)
        else:
            offending = f"{_constant_name(ofp, 'OFPT_', msg_type)} {offending}"
    except Exception:
        pass
    return f"type={type_name} code={code_name} xid={error.xid} offending={offending}"


def _constant_name(module, prefix, value):
    for name in dir(module):
        if name.startswith(prefix) and getattr(module, name) == value:
            return name
    return str(value)


def _error_code_name(ofp, type_name, code):
    # OFPET_BAD_MATCH -> codes are OFPBMC_*; the spec's prefixes are irregular,
    # so look the code up among the names Ryu lists for that type.
    prefixes = {
        "OFPET_HELLO_FAILED": "OFPHFC_",
        "OFPET_BAD_REQUEST": "OFPBRC_",
        "OFPET_BAD_ACTION": "OFPBAC_",
        "OFPET_BAD_INSTRUCTION": "OFPBIC_",
        "OFPET_BAD_MATCH": "OFPBMC_",
        "OFPET_FLOW_MOD_FAILED": "OFPFMFC_",
        "OFPET_TABLE_FEATURES_FAILED": "OFPTFFC_",
        "OFPET_METER_MOD_FAILED": "OFPMMFC_",
    }
    prefix = prefixes.get(type_name)
    return _constant_name(ofp, prefix, code) if prefix else str(code)
