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

from ryu.ofproto import ofproto_common
from ryu.ofproto import ofproto_v1_3 as ofp

from smtp_border.rules import MATCH_FIELDS, METADATA_MASK, SAMPLE_BYTES

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

