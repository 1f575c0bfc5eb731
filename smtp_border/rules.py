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

    def __post_init__(self):
        # OpenFlow prerequisites: an address match needs the matching eth_type,
        # a TCP port needs ip_proto=6. Catch compiler bugs here, not on a switch.
        for network in (self.ip_src, self.ip_dst):
            if network is not None and self.eth_type != _eth_type_of(network):
                raise ValueError(f"match on {network} needs eth_type {_eth_type_of(network):#06x}")
        if self.tcp_dst is not None and self.ip_proto != IP_PROTO_TCP:
            raise ValueError("match on tcp_dst needs ip_proto=6")

    def sort_key(self):
        # Wildcards sort first; netaddr orders IPv4 before IPv6.
        return tuple((0,) if v is None else (1, v) for v in vars(self).values())


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
    m = rule.match
    if m.in_port is not None:
        fields.append(f"in_port={m.in_port}")
    if m.metadata is not None:
        fields.append(f"metadata={m.metadata:#x}/{METADATA_MASK:#x}")
    if m.eth_type is not None:
        fields.append(f"dl_type={m.eth_type:#06x}")
    if m.ip_proto is not None:
        fields.append(f"nw_proto={m.ip_proto}")
    if m.tcp_dst is not None:
        fields.append(f"tp_dst={m.tcp_dst}")
    for name, network in (("src", m.ip_src), ("dst", m.ip_dst)):
        if network is not None:
            prefix = "nw_" if network.version == 4 else "ipv6_"
            fields.append(f"{prefix}{name}={_ofctl_network(network)}")
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


def _ofctl_network(network):
    return str(network.ip) if network.size == 1 else str(network)


def _eth_type_of(network):
    return ETH_TYPE_IPV4 if network.version == 4 else ETH_TYPE_IPV6
