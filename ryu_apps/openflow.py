"""Translate abstract FlowRules into Ryu OpenFlow 1.3 messages.

Nothing here decides policy; it only spells rules as OpenFlow (flow mods
through ryu_apps.wire, everything else through Ryu's parser) and wraps a
change in an ONF bundle (the OpenFlow 1.3 extension that Open
vSwitch implements) so that a switch applies it all at once or not at all.
"""
import collections.abc
import struct

import netaddr

from ryu_apps import wire
from ryu_apps.framework import ofproto_parser, ofproto_v1_3_parser
from ryu_apps.framework import ofproto_v1_3 as ofp
from smtp_border.rules import MATCH_FIELDS, METADATA_MASK, SAMPLE_BYTES, FlowRule, Instructions, Match

def match_of(parser, match):
    """Ryu's OFPMatch for a Match, its fields in the declared order (Ryu
    would sort them by number, putting the Nicira ip_frag first, which Open
    vSwitch refuses)."""
    ordered = []
    for field, value, mask in match.fields():
        if field.kind == "prefix":
            value = str(netaddr.IPAddress(value, field.version))
            mask = None if mask is None else str(netaddr.IPAddress(mask, field.version))
        ordered.append((field.oxm, value if mask is None else (value, mask)))
    return parser.OFPMatch(_ordered_fields=ordered)


def rule_from_flow(stats):
    """The FlowRule a switch reports (OFPFlowStats), or None for a flow this
    app would never install: another field, mask, action or instruction."""
    match = _match_from(stats.match)
    instructions = _instructions_from(stats.instructions)
    if match is None or instructions is None or stats.idle_timeout or stats.hard_timeout:
        return None
    try:
        return FlowRule(stats.table_id, stats.priority, match, instructions, stats.cookie)
    except ValueError:
        return None


def _match_from(ofp_match):
    fields = []
    for name, value in ofp_match.items():
        if name not in _FIELD_NAMES:
            return None  # a field the policy never matches (a MAC address, a UDP port, ...)
        value, mask = value if isinstance(value, tuple) else (value, None)
        if isinstance(value, str):  # an IP address, in Ryu's text
            value = netaddr.IPAddress(value).value
            mask = None if mask is None else netaddr.IPAddress(mask).value
        fields.append((name, value, mask))
    return Match.from_fields(fields)


_FIELD_NAMES = {field.oxm for field in MATCH_FIELDS}


def _instructions_from(instructions):
    found = {}
    for instruction in instructions:
        if isinstance(instruction, ofproto_v1_3_parser.OFPInstructionGotoTable):
            found["goto_table"] = instruction.table_id
        elif isinstance(instruction, ofproto_v1_3_parser.OFPInstructionWriteMetadata):
            if instruction.metadata_mask != METADATA_MASK:
                return None
            found["write_metadata"] = instruction.metadata
        elif isinstance(instruction, ofproto_v1_3_parser.OFPInstructionMeter):
            found["sample_meter"] = instruction.meter_id
        elif isinstance(instruction, ofproto_v1_3_parser.OFPInstructionActions) and instruction.type == ofp.OFPIT_APPLY_ACTIONS:
            ports = [(a.port, a.max_len) for a in instruction.actions if isinstance(a, ofproto_v1_3_parser.OFPActionOutput)]
            if len(ports) != len(instruction.actions) or len(ports) != 1:
                return None
            if not wire.take_output(found, *ports[0]):
                return None
        else:
            return None
    return Instructions(**found)


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


class Foreign:
    """A flow in the owned tables that this app would never install (added
    by hand, or by another release): deleted by its own match, unless a
    desired flow takes its place (same key: the add replaces it)."""

    def __init__(self, entry):
        self.table = entry.table_id
        self.priority = entry.priority
        self.match = entry.match
        self.key = entry.key


def delete_foreign(datapath, foreign):
    """Delete exactly the flow a switch reported (table, priority, match)."""
    return wire.delete_by_match(foreign.table, foreign.priority, foreign.match)


class _BytesBody(collections.abc.Sequence):
    """The body of one multipart reply, kept as the bytes the switch sent:
    this app reads them straight (ryu_apps.wire), and for any other Ryu app
    in the process it is the list of stats objects Ryu would have made,
    parsed when first used."""

    STATS = None  # the Ryu stats class of one entry

    def __init__(self, data):
        self.data = data
        self._parsed = None

    def _stats(self):
        if self._parsed is None:
            self._parsed, offset = [], 0
            while offset < len(self.data):
                stats = self.STATS.parser(self.data, offset)
                self._parsed.append(stats)
                offset += stats.length
        return self._parsed

    def __getitem__(self, index):
        return self._stats()[index]

    def __len__(self):
        return len(self._stats())


class FlowStatsBody(_BytesBody):
    """A flow-stats reply. `entries()` reads the flows this app installed
    straight into FlowRules (ryu_apps.wire.flow_entries), about 200 ms faster
    than Ryu's objects for 10,000 flows."""

    STATS = ofproto_v1_3_parser.OFPFlowStats

    def entries(self):
        return wire.flow_entries(self.data)


class TableFeaturesBody(_BytesBody):
    """A table-features reply. `features()` reads what the profile choice
    needs (ryu_apps.wire.table_features): Open vSwitch's 1.2 MB answer in a
    few ms rather than Ryu's 280."""

    STATS = ofproto_v1_3_parser.OFPTableFeaturesStats

    def features(self):
        from smtp_border.pipeline import TableFeatures

        return [TableFeatures(table_id, max_entries, frozenset(instructions), frozenset(next_tables),
                              frozenset(matches), name)
                for table_id, name, max_entries, instructions, next_tables, matches in wire.table_features(self.data)]


_BODIES = {
    ofp.OFPMP_FLOW: (ofproto_v1_3_parser.OFPFlowStatsReply, FlowStatsBody),
    ofp.OFPMP_TABLE_FEATURES: (ofproto_v1_3_parser.OFPTableFeaturesStatsReply, TableFeaturesBody),
}


def install_flow_stats_reader():
    """Make Ryu hand each OpenFlow 1.3 flow-stats and table-features reply
    over with its body as bytes (FlowStatsBody, TableFeaturesBody), every
    other message as before (idempotent)."""
    parsers = ofproto_v1_3_parser._MSG_PARSERS
    original = parsers[ofp.OFPT_MULTIPART_REPLY]
    if getattr(original, "_smtp_border", False):
        return

    def parser(datapath, version, msg_type, msg_len, xid, buf):
        kind, flags = struct.unpack_from(ofp.OFP_MULTIPART_REPLY_PACK_STR, buf, ofp.OFP_HEADER_SIZE)
        if kind not in _BODIES:
            return original(datapath, version, msg_type, msg_len, xid, buf)
        reply, body = _BODIES[kind]
        msg = super(ofproto_v1_3_parser.OFPMultipartReply, reply).parser(
            datapath, version, msg_type, msg_len, xid, buf)
        msg.type, msg.flags = kind, flags
        msg.body = body(bytes(buf[ofp.OFP_MULTIPART_REPLY_SIZE:msg_len]))
        return msg

    parser._smtp_border = True
    parsers[ofp.OFPT_MULTIPART_REPLY] = parser


def flow_mod(datapath, op, item):
    """The flow mod of one step of an ordering plan (smtp_border/ordering.py)."""
    if op == "add":
        return wire.add_flow(item)
    return delete_foreign(datapath, item) if isinstance(item, Foreign) else wire.delete_flow(item)


def flow_stats_request(datapath, cookie=0, cookie_mask=0):
    """Every flow of the switch, or those whose cookie matches under the mask."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    return parser.OFPFlowStatsRequest(
        datapath, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, cookie_mask, parser.OFPMatch()
    )


def apply_diff(diff):
    """Flow mods for a RuleDiff, adds before deletes, for a bundle (where
    the order does not matter). Without bundles, smtp_border/ordering.py
    decides the order."""
    return [wire.add_flow(r) for r in diff.add] + [wire.delete_flow(r) for r in diff.delete]


def bundle(datapath, bundle_id, messages):
    """Wrap flow mods in one atomic, ordered ONF bundle: open, add..., commit."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    flags = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
    wrapped = [parser.ONFBundleCtrlMsg(datapath, bundle_id, ofp.ONF_BCT_OPEN_REQUEST, flags, [])]
    wrapped.extend(wire.BundleAdd(bundle_id, flags, m) for m in messages)
    wrapped.append(parser.ONFBundleCtrlMsg(datapath, bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, flags, []))
    return wrapped


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


# -- what a switch says of itself (the capability probe) -----------------------


def table_features_request(datapath):
    """A table-features *query*: an empty body. (A body would be a request to
    reconfigure the tables, which this app never makes.)"""
    return datapath.ofproto_parser.OFPTableFeaturesStatsRequest(datapath, 0, [])


def meter_features_request(datapath):
    return datapath.ofproto_parser.OFPMeterFeaturesStatsRequest(datapath, 0)


def table_features(bodies):
    """pipeline.TableFeatures of every table in a table-features reply (its
    bodies, one per message: a large answer comes in several)."""
    return tuple(t for body in bodies for t in body.features())
