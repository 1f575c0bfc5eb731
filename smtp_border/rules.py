"""Abstract OpenFlow 1.3 flow rules: what the compiler emits and the Ryu layer sends.

A FlowRule is plain data (no Ryu types), hashable, and identified on a switch by
(table, priority, match), exactly as OpenFlow identifies a flow entry, so two
rule sets can be compared and diffed directly.

The pipeline the rules describe (docs/flow-tables.md has the picture):

* CLASSIFY_TABLE sends TCP to an SMTP port to POLICY_TABLE, marking in the
  metadata where it came from (campus or outside); everything else goes
  straight to FORWARD_TABLE.
* POLICY_TABLE allows (goto FORWARD_TABLE) or drops (no instructions).
* FORWARD_TABLE forwards what was allowed, with the NORMAL action by default.
"""
import dataclasses
import enum
import zlib
from dataclasses import dataclass
from typing import Optional

import netaddr

CLASSIFY_TABLE = 0
POLICY_TABLE = 1
FORWARD_TABLE = 2
OWNED_TABLES = (CLASSIFY_TABLE, POLICY_TABLE, FORWARD_TABLE)

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_IPV6 = 0x86DD
IP_PROTO_TCP = 6
# The TCP destination port a switch reports when the header is too short to
# hold the ports (a tiny first fragment). No TCP service listens on port 0.
UNREADABLE_PORT = 0

# The meters that cap blocked-packet samples sent to the controller: one for
# Part 1 (inbound) and one for Part 2 (outbound), so that a scan from outside
# cannot use up the samples that name infected campus hosts.
INBOUND_METER_ID = 1
OUTBOUND_METER_ID = 2
AUDIT_METERS = {INBOUND_METER_ID: "inbound", OUTBOUND_METER_ID: "outbound"}
# Enough of a sampled packet for its Ethernet, IP (v4 or v6) and TCP headers.
SAMPLE_BYTES = 128

# Two metadata bits say where an SMTP packet came from, and a third which
# version of the policy table judges it. The mask leaves the other 61 bits to
# whatever runs in the forwarding table.
METADATA_MASK = 0x7
FROM_CAMPUS = 0x1
FROM_OUTSIDE = 0x2
# Version 0 is what the compiler emits and what a switch with bundles always
# holds. A switch without bundles alternates between 0 and 1 when a change
# touches the classification: the new version's policy table is installed
# beside the old one, then table 0 is switched over (smtp_border/ordering.py).
VERSION_BIT = 0x4

# Cookie layout: 16-bit application tag | 8-bit clause | 40-bit item id.
# The tag marks flows as ours; the clause says which part of the policy a flow
# enforces; the item id (a CRC of the network or port it is about) keeps
# flows of one clause apart in dumps and logs.
COOKIE_APP_TAG = 0x534D  # "SM"


class Clause(enum.IntEnum):
    """Which part of the policy a flow enforces (the cookie's clause byte)."""

    NOT_SMTP = 0x01  # table 0 default: not SMTP, straight to forwarding
    FROM_UPLINK = 0x02  # table 0: arrived on an uplink, so from outside
    FROM_CAMPUS_SOURCE = 0x03  # table 0: campus source address
    FROM_OUTSIDE_SOURCE = 0x04  # table 0: any other source address
    NOT_UPLINK = 0x05  # table 0: arrived on a campus-side port, so from campus whatever its source
    CAMPUS_TO_CAMPUS = 0x10  # table 1: allowed, internal mail
    GATEWAY_INBOUND = 0x11  # table 1: allowed, outside to a campus relay
    GATEWAY_OUTBOUND = 0x12  # table 1: allowed, campus relay to outside
    EXCEPTION_INBOUND = 0x13  # table 1: allowed, Part 1 exception
    EXCEPTION_OUTBOUND = 0x14  # table 1: allowed, Part 2 exception
    PART1_BLOCK = 0x20  # table 1: dropped, outside to campus
    PART2_BLOCK = 0x21  # table 1: dropped, campus to outside
    TRANSIT = 0x22  # table 1 default: neither end on campus, not ours to judge
    UNCLASSIFIABLE = 0x23  # table 0: dropped, a packet whose SMTP port the switch cannot see
    FORWARD = 0x30  # table 2: NORMAL forwarding


def rule_version(rule):
    """The policy-table version a rule belongs to (0 or 1), or None for a
    rule that neither writes nor matches the version (table 0's pass-through,
    table 2)."""
    value = rule.match.metadata if rule.table == POLICY_TABLE else rule.instructions.write_metadata
    return None if value is None else int(bool(value & VERSION_BIT))


def with_version(rule, version):
    """The rule as it reads in policy-table version `version`."""
    if rule_version(rule) in (None, version):
        return rule
    if rule.table == POLICY_TABLE:
        match = dataclasses.replace(rule.match, metadata=rule.match.metadata ^ VERSION_BIT)
        return dataclasses.replace(rule, match=match)
    ins = dataclasses.replace(rule.instructions, write_metadata=rule.instructions.write_metadata ^ VERSION_BIT)
    return dataclasses.replace(rule, instructions=ins)


def make_cookie(clause, item=""):
    item_id = zlib.crc32(str(item).encode()) & 0xFFFFFFFFFF
    return (COOKIE_APP_TAG << 48) | (int(clause) << 40) | item_id


def cookie_clause(cookie):
    """The Clause a cookie names, or None for a flow that is not ours."""
    if cookie >> 48 != COOKIE_APP_TAG:
        return None
    try:
        return Clause((cookie >> 40) & 0xFF)
    except ValueError:
        return None


class IpFrag(enum.Enum):
    """Open vSwitch's fragment classes (the Nicira ip_frag field, as value
    and mask): OpenFlow 1.3 itself cannot tell a first fragment from a later
    one, and a switch reads ports only from the first."""

    NO = (0, 3)  # not a fragment
    FIRST = (1, 3)  # offset 0, more to follow
    LATER = (3, 3)  # offset > 0: carries no transport header
    NOT_LATER = (0, 2)  # not a fragment, or the first: where the ports are

    @property
    def ofctl(self):
        return self.name.lower()


@dataclass(frozen=True)
class MatchField:
    """One match field, declared once: how a Match attribute is spelled on
    the wire (its OXM name, as Ryu spells it, class and field number, width),
    in ovs-ofctl, and which kind of value it holds. The wire encoder, Ryu's
    OFPMatch, ovs-ofctl text, reading a switch's flows back and the tests'
    flow simulator all go through MATCH_FIELDS."""

    attribute: str  # the Match attribute
    oxm: str  # OXM field name (Ryu's spelling)
    oxm_class: int  # 0x8000 OpenFlow basic, 0x0001 Nicira NXM_1
    number: int  # field number within the class
    width: int  # bytes of the value
    ofctl: str  # ovs-ofctl name
    kind: str  # "int", "hex", "metadata" (under METADATA_MASK), "prefix" (an address), "frag" (IpFrag)
    version: Optional[int] = None  # for addresses: the IP version this field carries


OXM_BASIC = 0x8000
NXM_1 = 0x0001

# In the order fields go on the wire. Open vSwitch checks each field's
# prerequisites as it reads them (ip_frag needs eth_type before it), so the
# Nicira fields come last; Ryu's OFPMatch would sort ip_frag first and be
# refused with OFPBMC_BAD_PREREQ.
MATCH_FIELDS = (
    MatchField("in_port", "in_port", OXM_BASIC, 0, 4, "in_port", "int"),
    MatchField("metadata", "metadata", OXM_BASIC, 2, 8, "metadata", "metadata"),
    MatchField("eth_type", "eth_type", OXM_BASIC, 5, 2, "dl_type", "hex"),
    MatchField("ip_proto", "ip_proto", OXM_BASIC, 10, 1, "nw_proto", "int"),
    MatchField("ip_src", "ipv4_src", OXM_BASIC, 11, 4, "nw_src", "prefix", 4),
    MatchField("ip_dst", "ipv4_dst", OXM_BASIC, 12, 4, "nw_dst", "prefix", 4),
    MatchField("tcp_dst", "tcp_dst", OXM_BASIC, 14, 2, "tp_dst", "int"),
    MatchField("ip_src", "ipv6_src", OXM_BASIC, 26, 16, "ipv6_src", "prefix", 6),
    MatchField("ip_dst", "ipv6_dst", OXM_BASIC, 27, 16, "ipv6_dst", "prefix", 6),
    MatchField("ip_frag", "ip_frag", NXM_1, 26, 1, "nw_frag", "frag"),
)
_BY_OXM = {f.oxm: f for f in MATCH_FIELDS}
# What Match.fields() walks for every flow it encodes: the declaration, unpacked once.
_FIELD_PLAN = tuple((f, f.attribute, f.kind, f.version, 8 * f.width) for f in MATCH_FIELDS)


@dataclass(frozen=True)
class Match:
    """The OpenFlow match fields the policy needs; None means wildcard."""

    in_port: Optional[int] = None
    metadata: Optional[int] = None  # matched under METADATA_MASK
    eth_type: Optional[int] = None
    ip_proto: Optional[int] = None
    tcp_dst: Optional[int] = None
    ip_src: Optional[netaddr.IPNetwork] = None
    ip_dst: Optional[netaddr.IPNetwork] = None
    ip_frag: Optional[IpFrag] = None  # Open vSwitch (Nicira) extension

    def __post_init__(self):
        # OpenFlow prerequisites: an address match needs the matching eth_type,
        # a TCP port needs ip_proto=6, a fragment class an IP eth_type. Catch
        # compiler bugs here, not on a switch.
        for network in (self.ip_src, self.ip_dst):
            if network is not None and self.eth_type != _eth_type_of(network):
                raise ValueError(f"match on {network} needs eth_type {_eth_type_of(network):#06x}")
        if self.tcp_dst is not None and self.ip_proto != IP_PROTO_TCP:
            raise ValueError("match on tcp_dst needs ip_proto=6")
        if self.ip_frag is not None and self.eth_type not in (ETH_TYPE_IPV4, ETH_TYPE_IPV6):
            raise ValueError("match on ip_frag needs an IP eth_type")

    def sort_key(self):
        # Wildcards sort first; networks by netaddr's own key (IPv4 before
        # IPv6), computed once here rather than at every comparison.
        return tuple((0,) if v is None else (1, _sortable(v)) for v in vars(self).values())

    def fields(self):
        """(MatchField, value, mask) for every field matched, in wire order;
        values and masks are integers, mask None for an exact match."""
        found = []
        for field, attribute, kind, version, bits in _FIELD_PLAN:
            value = getattr(self, attribute)
            if value is None:
                continue
            if kind == "prefix":
                if value.version != version:
                    continue
                # A host is an exact match; only a real network needs a mask.
                found.append((field, value.value, None if value.prefixlen == bits else value.netmask.value))
            elif kind == "metadata":
                found.append((field, value, METADATA_MASK))
            elif kind == "frag":
                found.append((field, *value.value))
            else:
                found.append((field, value, None))
        return found

    @classmethod
    def from_fields(cls, fields):
        """The Match for (OXM name, value, mask) triples as a switch reports
        them, or None if any is a field, mask or value the policy never uses."""
        attributes = {}
        for name, value, mask in fields:
            field = _BY_OXM.get(name)
            if field is None:
                return None
            if field.kind == "prefix":
                length = 8 * field.width
                if mask is not None:
                    mask = netaddr.IPAddress(mask, field.version)
                    if not mask.is_netmask():
                        return None  # not a prefix
                    length = mask.netmask_bits()
                network = netaddr.IPNetwork((value, length), version=field.version)
                if network.ip != network.network:
                    return None  # host bits set: the compiler never sends that
                value = network
            elif field.kind == "metadata":
                if mask != METADATA_MASK:
                    return None
            elif field.kind == "frag":
                try:
                    value = IpFrag((value, 3 if mask is None else mask))
                except ValueError:
                    return None
            elif mask is not None:
                return None
            attributes[field.attribute] = value
        try:
            return cls(**attributes)
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Instructions:
    """What a matching packet gets. Without goto_table or output_normal the
    packet is dropped; a dropped packet may still be sampled: sent, through
    the meter, to the controller for the audit log."""

    write_metadata: Optional[int] = None  # written under METADATA_MASK
    goto_table: Optional[int] = None
    output_normal: bool = False
    sample_meter: Optional[int] = None  # meter, then SAMPLE_BYTES to the controller

    @property
    def drops(self):
        return self.goto_table is None and not self.output_normal


DROP = Instructions()


def drop_and_sample(meter_id):
    return Instructions(sample_meter=meter_id)


@dataclass(frozen=True)
class FlowRule:
    table: int
    priority: int
    match: Match
    instructions: Instructions
    cookie: int

    @property
    def key(self):
        """What identifies the flow entry on a switch (OpenFlow's strict match)."""
        return (self.table, self.priority, self.match)

    @property
    def clause(self):
        return cookie_clause(self.cookie)


def sorted_rules(rules):
    """Rules in the order ovs-ofctl shows them: by table, then highest priority first."""
    return sorted(rules, key=lambda r: (r.table, -r.priority, r.match.sort_key()))


def to_ofctl(rule):
    """The rule in ovs-ofctl flow syntax (add-flow, diff-flows), OpenFlow 1.3."""
    fields = [f"cookie={rule.cookie:#x}", f"table={rule.table}", f"priority={rule.priority}"]
    for field, _, _ in rule.match.fields():
        fields.append(f"{field.ofctl}={_ofctl_value(field, getattr(rule.match, field.attribute))}")
    actions = []
    ins = rule.instructions
    if ins.sample_meter is not None:
        actions.append(f"meter:{ins.sample_meter},CONTROLLER:{SAMPLE_BYTES}")
    if ins.output_normal:
        actions.append("NORMAL")
    if ins.write_metadata is not None:
        actions.append(f"write_metadata:{ins.write_metadata:#x}/{METADATA_MASK:#x}")
    if ins.goto_table is not None:
        actions.append(f"goto_table:{ins.goto_table}")
    return ",".join(fields) + " actions=" + (",".join(actions) or "drop")


def _ofctl_value(field, value):
    if field.kind == "prefix":
        return str(value.ip) if value.size == 1 else str(value)
    if field.kind == "metadata":
        return f"{value:#x}/{METADATA_MASK:#x}"
    if field.kind == "frag":
        return value.ofctl
    return f"{value:#06x}" if field.kind == "hex" else str(value)


def _sortable(value):
    if isinstance(value, netaddr.IPNetwork):
        return value.sort_key()
    return value.value if isinstance(value, IpFrag) else value


def _eth_type_of(network):
    return ETH_TYPE_IPV4 if network.version == 4 else ETH_TYPE_IPV6
