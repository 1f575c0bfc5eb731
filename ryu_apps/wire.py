"""OpenFlow 1.3 bytes for our flow mods, without building Ryu message objects.

Why: a switch that connects gets every flow of the policy, 10,000 and more.
Ryu spells each flow as an OFPFlowMod holding an OFPMatch, instruction and
action objects, then serialises them: about 0.15 ms a flow in pure Python,
most of a full install (docs/performance.md). The compiler emits only a few
shapes of flow, so they are packed here with precompiled `struct`s: a few
microseconds a flow.

The bytes are exactly those Ryu would send for the same flow
(tests/test_wire.py compares them over random policies), so this module is a
faster spelling, not a second protocol implementation to trust. Ryu still builds
every other message (barriers, meters, statistics, bundle control).
"""
import struct

from ryu.ofproto import ofproto_common
from ryu.ofproto import ofproto_v1_3 as ofp

from smtp_border.rules import ETH_TYPE_IPV6, METADATA_MASK, SAMPLE_BYTES

_HEADER = struct.Struct(ofp.OFP_HEADER_PACK_STR)  # version, type, length, xid
_FLOW_MOD = struct.Struct(ofp.OFP_FLOW_MOD_PACK_STR0)  # cookie ... flags, without the match
_MATCH_HEADER = struct.Struct("!HH")  # type, length (without padding)
_OXM_HEADER = struct.Struct("!I")
_GOTO_TABLE = struct.Struct("!HHB3x")
_WRITE_METADATA = struct.Struct("!HH4xQQ")
_METER = struct.Struct("!HHI")
_APPLY_OUTPUT = struct.Struct("!HH4x" + "HHIH6x")  # apply-actions holding one output action
_BUNDLE_ADD = struct.Struct("!IIIxxH")  # experimenter, exp_type, bundle_id, pad, flags

_OXM_CLASS = ofp.OFPXMC_OPENFLOW_BASIC


def _oxm(field, length, masked=False):
    """The 4-byte OXM TLV header of an OpenFlow-basic field."""
    payload = 2 * length if masked else length
    return _OXM_HEADER.pack((_OXM_CLASS << 16) | (field << 9) | (int(masked) << 8) | payload)


_IN_PORT = _oxm(ofp.OFPXMT_OFB_IN_PORT, 4)
_METADATA = _oxm(ofp.OFPXMT_OFB_METADATA, 8, masked=True)
_ETH_TYPE = _oxm(ofp.OFPXMT_OFB_ETH_TYPE, 2)
_IP_PROTO = _oxm(ofp.OFPXMT_OFB_IP_PROTO, 1)
_TCP_DST = _oxm(ofp.OFPXMT_OFB_TCP_DST, 2)
_METADATA_VALUE = struct.Struct("!QQ")  # value, mask


def _address_fields(version, source, field, width):
    return (version, source), (_oxm(field, width), _oxm(field, width, masked=True), width)


# (IP version, source?) -> (exact header, masked header, address width in bytes)
_ADDRESS = dict((
    _address_fields(4, True, ofp.OFPXMT_OFB_IPV4_SRC, 4),
    _address_fields(4, False, ofp.OFPXMT_OFB_IPV4_DST, 4),
    _address_fields(6, True, ofp.OFPXMT_OFB_IPV6_SRC, 16),
    _address_fields(6, False, ofp.OFPXMT_OFB_IPV6_DST, 16),
))


def match_bytes(match):
    """An OXM ofp_match, padded to 8, its fields in OXM field order as Ryu
    sends them: tcp_dst (field 14) comes after IPv4 addresses (11, 12) and
    before IPv6 ones (26, 27)."""
    fields = []
    if match.in_port is not None:
        fields.append(_IN_PORT + match.in_port.to_bytes(4, "big"))
    if match.metadata is not None:
        fields.append(_METADATA + _METADATA_VALUE.pack(match.metadata, METADATA_MASK))
    if match.eth_type is not None:
        fields.append(_ETH_TYPE + match.eth_type.to_bytes(2, "big"))
    if match.ip_proto is not None:
        fields.append(_IP_PROTO + match.ip_proto.to_bytes(1, "big"))
    addresses = []
    if match.ip_src is not None:
        addresses.append(_address(match.ip_src, True))
    if match.ip_dst is not None:
        addresses.append(_address(match.ip_dst, False))
    tcp_dst = [] if match.tcp_dst is None else [_TCP_DST + match.tcp_dst.to_bytes(2, "big")]
    ipv6 = match.eth_type == ETH_TYPE_IPV6
    fields.extend(tcp_dst + addresses if ipv6 else addresses + tcp_dst)
    body = b"".join(fields)
    length = _MATCH_HEADER.size + len(body)
    return _MATCH_HEADER.pack(ofp.OFPMT_OXM, length) + body + bytes(-length % 8)


def _address(network, source):
    exact, masked, width = _ADDRESS[network.version, source]
    address = network.value.to_bytes(width, "big")
    # A host is an exact match; only a real network needs a mask.
    if network.prefixlen == 8 * width:
        return exact + address
    return masked + address + network.netmask.value.to_bytes(width, "big")


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

