"""OpenFlow 1.3 bytes for our flow mods, without building Ryu message objects.

Why: a switch that connects gets every flow of the policy, 10,000 and more.
Ryu spells each flow as an OFPFlowMod holding an OFPMatch, instruction and
action objects, then serialises them: about 0.15 ms a flow in pure Python,
most of a full install (docs/performance.md). The compiler emits only a few
shapes of flow, so they are packed here with precompiled `struct`s: a few
microseconds a flow.

The bytes are exactly those Ryu sends for the same flow, match fields in
the declared order (tests/unit/test_wire.py compares them over random
policies), so this module is a faster spelling, not a second protocol
implementation to trust. Ryu still builds
every other message (barriers, meters, statistics, bundle control).
"""
import struct
from typing import NamedTuple, Optional

from ryu_apps.framework import ofproto_common
from ryu_apps.framework import ofproto_v1_3 as ofp

from smtp_border.rules import MATCH_FIELDS, METADATA_MASK, SAMPLE_BYTES, FlowRule, Instructions, Match

_HEADER = struct.Struct(ofp.OFP_HEADER_PACK_STR)  # version, type, length, xid
_FLOW_MOD = struct.Struct(ofp.OFP_FLOW_MOD_PACK_STR0)  # cookie ... flags, without the match
_MATCH_HEADER = struct.Struct("!HH")  # type, length (without padding)
_OXM_HEADER = struct.Struct("!I")
_GOTO_TABLE = struct.Struct("!HHB3x")
_WRITE_METADATA = struct.Struct("!HH4xQQ")
_METER = struct.Struct("!HHI")
_APPLY_OUTPUT = struct.Struct("!HH4x" + "HHIH6x")  # apply-actions holding one output action
_BUNDLE_ADD = struct.Struct("!IIIxxH")  # experimenter, exp_type, bundle_id, pad, flags


def _oxm(field, masked):
    """The 4-byte OXM TLV header of a match field, exact or masked."""
    payload = 2 * field.width if masked else field.width
    return _OXM_HEADER.pack((field.oxm_class << 16) | (field.number << 9) | (int(masked) << 8) | payload)


# OXM name -> (exact header, masked header, width), from the one declaration.
_FIELDS = {f.oxm: (_oxm(f, False), _oxm(f, True), f.width) for f in MATCH_FIELDS}


def match_bytes(match):
    """An OXM ofp_match, padded to 8, its fields in the declared order
    (smtp_border.rules.MATCH_FIELDS)."""
    parts = []
    for field, value, mask in match.fields():
        exact, masked, width = _FIELDS[field.oxm]
        if mask is None:
            parts.append(exact + value.to_bytes(width, "big"))
        else:
            parts.append(masked + value.to_bytes(width, "big") + mask.to_bytes(width, "big"))
    body = b"".join(parts)
    length = _MATCH_HEADER.size + len(body)
    return _MATCH_HEADER.pack(ofp.OFPMT_OXM, length) + body + bytes(-length % 8)


def instructions_bytes(instructions):
    """The instructions, in the order the app has always sent them."""
    parts = []
    if instructions.sample_meter is not None:
        parts.append(_METER.pack(ofp.OFPIT_METER, _METER.size, instructions.sample_meter))
        parts.append(_apply_output(ofp.OFPP_CONTROLLER, SAMPLE_BYTES))
    if instructions.output_normal:
        parts.append(_apply_output(ofp.OFPP_NORMAL, ofp.OFPCML_MAX))
    if instructions.write_metadata is not None:
        parts.append(_WRITE_METADATA.pack(
            ofp.OFPIT_WRITE_METADATA, _WRITE_METADATA.size, instructions.write_metadata, METADATA_MASK
        ))
    if instructions.goto_table is not None:
        parts.append(_GOTO_TABLE.pack(ofp.OFPIT_GOTO_TABLE, _GOTO_TABLE.size, instructions.goto_table))
    return b"".join(parts)


def _apply_output(port, max_len):
    return _APPLY_OUTPUT.pack(
        ofp.OFPIT_APPLY_ACTIONS, _APPLY_OUTPUT.size, ofp.OFPAT_OUTPUT, ofp.OFP_ACTION_OUTPUT_SIZE, port, max_len
    )


class Encodable:
    """A message whose bytes are known but for the xid.

    It follows the part of Ryu's MsgBase that Datapath.set_xid and sending
    use (set_xid, serialize, buf), so the app sends both kinds alike."""

    __slots__ = ("msg_type", "body", "xid", "buf")

    def __init__(self, msg_type, body):
        self.msg_type = msg_type
        self.body = body
        self.xid = None
        self.buf = None

    def set_xid(self, xid):
        self.xid = xid

    def serialize(self):
        self.buf = self.encode(self.xid)

    def encode(self, xid):
        return _message(self.msg_type, xid, self.body)


class BundleAdd(Encodable):
    """ONF bundle extension: add `message` to bundle `bundle_id`. The inner
    message carries the outer xid (OpenFlow 1.3 bundle extension, 3.3)."""

    __slots__ = ("message",)

    def __init__(self, bundle_id, flags, message):
        prefix = _BUNDLE_ADD.pack(ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, flags)
        super().__init__(ofp.OFPT_EXPERIMENTER, prefix)
        self.message = message

    def encode(self, xid):
        return _message(self.msg_type, xid, self.body + self.message.encode(xid))


def _message(msg_type, xid, body):
    return _HEADER.pack(ofp.OFP_VERSION, msg_type, _HEADER.size + len(body), xid) + body


def add_flow(rule):
    return Encodable(ofp.OFPT_FLOW_MOD, _flow_mod_body(
        rule.cookie, rule.table, ofp.OFPFC_ADD, rule.priority, 0, 0,
        match_bytes(rule.match) + instructions_bytes(rule.instructions),
    ))


def delete_flow(rule):
    """Delete exactly the flow entry of `rule` (table, priority, match)."""
    return Encodable(ofp.OFPT_FLOW_MOD, _flow_mod_body(
        0, rule.table, ofp.OFPFC_DELETE_STRICT, rule.priority, ofp.OFPP_ANY, ofp.OFPG_ANY, match_bytes(rule.match),
    ))


def _flow_mod_body(cookie, table_id, command, priority, out_port, out_group, tail):
    # No idle or hard timeout: the policy must outlive the controller (the
    # switches run in fail-mode secure and keep their flows while it is away).
    return _FLOW_MOD.pack(
        cookie, 0, table_id, command, 0, 0, priority, ofp.OFP_NO_BUFFER, out_port, out_group, 0
    ) + tail



# -- reading flows back -----------------------------------------------------------
#
# A switch reports its flows in flow-stats replies. Ryu turns each entry into
# an OFPFlowStats holding an OFPMatch and instruction objects: for 10,000 flows
# about 200 ms, most of reconnecting to a switch that already holds the policy
# (docs/performance.md, section 8). The entries this app installed have the
# few shapes it sends, so they are read here straight into FlowRules; any
# other entry reads as foreign (rule None), as openflow.rule_from_flow would
# read it (tests/unit/test_wire.py compares the two on every shape).

_FLOW_STATS = struct.Struct(ofp.OFP_FLOW_STATS_0_PACK_STR)  # length, table ... cookie, packets, bytes; 48 bytes
_INSTRUCTION = struct.Struct("!HH")
_OUTPUT = struct.Struct("!HHIH6x")
_BY_NUMBER = {(f.oxm_class, f.number): f for f in MATCH_FIELDS}


class FlowEntry(NamedTuple):
    """One entry of a flow-stats reply. `match` is the ofp_match as the
    switch sent it (padded), enough to delete the flow by; `rule` is the
    FlowRule it is, or None for a flow this app would never install; `key`
    identifies it as a FlowRule.key does where its match reads as a Match
    (so that a foreign flow in a desired flow's place is replaced, not
    deleted after the replacement), else by its bytes."""

    table_id: int
    priority: int
    cookie: int
    packet_count: int
    byte_count: int
    match: bytes
    rule: Optional[FlowRule]
    key: tuple


def flow_entries(data):
    """The FlowEntries of a flow-stats reply body (its ofp_flow_stats, one after another)."""
    entries, offset = [], 0
    while offset + _FLOW_STATS.size <= len(data):
        length, table_id, _, _, priority, idle, hard, _, cookie, packets, octets = _FLOW_STATS.unpack_from(data, offset)
        if length < _FLOW_STATS.size:
            raise ValueError(f"flow-stats entry of {length} bytes")
        match_start = offset + _FLOW_STATS.size
        match_length = _MATCH_HEADER.unpack_from(data, match_start)[1]
        match_end = match_start + match_length + (-match_length % 8)
        match = data[match_start:match_end]
        found = _match_of(match, match_length)
        rule = None
        if found is not None and not (idle or hard):  # the app's flows never time out
            ins = _instructions_of(data[match_end:offset + length])
            rule = None if ins is None else FlowRule(table_id, priority, found, ins, cookie)
        key = ("foreign", table_id, priority, match) if found is None else (table_id, priority, found)
        entries.append(FlowEntry(table_id, priority, cookie, packets, octets, match, rule, key))
        offset += length
    return entries


_TABLE_FEATURES = struct.Struct("!HB5x32sQQII")  # length, table_id, name, metadata match/write, config, max_entries
_PROPERTY = struct.Struct("!HH")  # type, length (without padding)
_INSTRUCTION_KINDS = {
    ofp.OFPIT_GOTO_TABLE: "goto_table",
    ofp.OFPIT_WRITE_METADATA: "write_metadata",
    ofp.OFPIT_WRITE_ACTIONS: "write_actions",
    ofp.OFPIT_APPLY_ACTIONS: "apply_actions",
    ofp.OFPIT_CLEAR_ACTIONS: "clear_actions",
    ofp.OFPIT_METER: "meter",
}
# For each field the policy matches: the first three bytes of its OXM
# header (class, field, has-mask bit) either way the switch lists it. The
# rest of a switch's list decides nothing here.
_OXM_PREFIXES = tuple((f.oxm, tuple(struct.pack("!HB", f.oxm_class, f.number << 1 | masked) for masked in (0, 1)))
                      for f in MATCH_FIELDS)


def _listed(body, prefixes):
    """True if an OXM header in a list of them (4-byte aligned) starts with one of `prefixes`."""
    for prefix in prefixes:
        found = body.find(prefix)
        while found >= 0:
            if found % 4 == 0:
                return True
            found = body.find(prefix, found + 1)
    return False


def table_features(data):
    """(table_id, name, max_entries, instruction kinds, next tables, OXM
    names) for each ofp_table_features of a table-features reply body,
    reading only the properties for regular flows that say what a table may
    match and do. Open vSwitch answers with 254 tables in about 1.2 MB,
    which Ryu's objects take 280 ms to build; this reads it in a few ms."""
    tables, offset = [], 0
    while offset + _TABLE_FEATURES.size <= len(data):
        length, table_id, name, _, _, _, max_entries = _TABLE_FEATURES.unpack_from(data, offset)
        if length < _TABLE_FEATURES.size:
            raise ValueError(f"table-features entry of {length} bytes")
        instructions, next_tables, matches = set(), set(), set()
        position, end = offset + _TABLE_FEATURES.size, offset + length
        while position + _PROPERTY.size <= end:
            kind, prop_length = _PROPERTY.unpack_from(data, position)
            if prop_length < _PROPERTY.size:
                raise ValueError(f"table-features property of {prop_length} bytes")
            body = data[position + _PROPERTY.size:position + prop_length]
            if kind == ofp.OFPTFPT_INSTRUCTIONS:
                inner = 0
                while inner + 4 <= len(body):
                    ins_type, ins_length = _PROPERTY.unpack_from(body, inner)
                    instructions.add(_INSTRUCTION_KINDS.get(ins_type, str(ins_type)))
                    inner += max(ins_length, 4)
            elif kind == ofp.OFPTFPT_NEXT_TABLES:
                next_tables.update(body)
            elif kind == ofp.OFPTFPT_MATCH:
                # Searched, not walked: Open vSwitch lists some 200 fields a
                # table, and only the policy's few matter (12 -> 2 ms a reply).
                matches.update(name for name, prefixes in _OXM_PREFIXES if _listed(body, prefixes))
            position += prop_length + (-prop_length % 8)
        tables.append((table_id, name.rstrip(b"\0").decode(errors="replace"), max_entries, instructions,
                       next_tables, matches))
        offset += length
    return tables


def _match_of(match, length):
    fields, offset = [], _MATCH_HEADER.size
    while offset < length:
        header = _OXM_HEADER.unpack_from(match, offset)[0]
        field = _BY_NUMBER.get((header >> 16, (header >> 9) & 0x7F))
        masked, size = (header >> 8) & 1, header & 0xFF
        width = size // 2 if masked else size
        if field is None or width != field.width:
            return None
        start = offset + _OXM_HEADER.size
        value = int.from_bytes(match[start:start + width], "big")
        mask = int.from_bytes(match[start + width:start + size], "big") if masked else None
        fields.append((field.oxm, value, mask))
        offset = start + size
    return Match.from_fields(fields)


def _instructions_of(data):
    found, offset = {}, 0
    while offset + _INSTRUCTION.size <= len(data):
        kind, length = _INSTRUCTION.unpack_from(data, offset)
        if length < _INSTRUCTION.size:
            return None
        if kind == ofp.OFPIT_GOTO_TABLE:
            found["goto_table"] = data[offset + 4]
        elif kind == ofp.OFPIT_WRITE_METADATA:
            _, _, metadata, mask = _WRITE_METADATA.unpack_from(data, offset)
            if mask != METADATA_MASK:
                return None
            found["write_metadata"] = metadata
        elif kind == ofp.OFPIT_METER:
            found["sample_meter"] = _METER.unpack_from(data, offset)[2]
        elif kind == ofp.OFPIT_APPLY_ACTIONS and length == _APPLY_OUTPUT.size:
            action, action_length, port, max_len = _OUTPUT.unpack_from(data, offset + 8)
            if action != ofp.OFPAT_OUTPUT or action_length != ofp.OFP_ACTION_OUTPUT_SIZE:
                return None
            if not take_output(found, port, max_len):
                return None
        else:
            return None
        offset += length
    return Instructions(**found)


def take_output(found, port, max_len):
    """An apply-actions output the app sends, noted in `found` (Instructions
    fields so far): NORMAL, or the sample after its meter. False for any other."""
    if port == ofp.OFPP_NORMAL:
        found["output_normal"] = True
        return True
    return port == ofp.OFPP_CONTROLLER and max_len == SAMPLE_BYTES and "sample_meter" in found


def delete_by_match(table_id, priority, match):
    """Delete exactly the flow a switch reported: its table, priority and
    ofp_match bytes as it sent them (a flow this app would not install)."""
    return Encodable(ofp.OFPT_FLOW_MOD, _flow_mod_body(
        0, table_id, ofp.OFPFC_DELETE_STRICT, priority, ofp.OFPP_ANY, ofp.OFPG_ANY, match,
    ))
