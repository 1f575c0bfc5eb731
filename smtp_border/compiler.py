"""Compile a Policy into the flow rules of one switch.

Pure: a Policy and a datapath id in, a frozenset of FlowRule out. The Ryu layer
only translates the result into OpenFlow messages.

How the semantics map onto two tables (docs/flow-tables.md):

CLASSIFY_TABLE, for TCP to an SMTP port only, decides where the packet came
from. On a switch whose uplinks are known (or an access switch, all of whose
ports are campus-side) the arrival port decides: an uplink means outside,
any other port campus, whatever the source address says. On a switch with
no such declaration, the address does: a campus source means campus, any
other outside.
The answer goes into two metadata bits, so POLICY_TABLE needs one rule per
exception, not one per exception and uplink and port.

POLICY_TABLE, highest priority first:
  campus -> campus                      allow
  outside -> gateway / campus -> out from gateway      allow
  outside -> inbound exception / outbound exception -> out   allow
  outside -> campus                     drop  (Part 1)
  campus -> anywhere else               drop  (Part 2)
  anything left (outside -> outside)    allow (transit; not the campus's mail)
"""
from dataclasses import dataclass
from typing import Tuple

import netaddr

from .diff import RuleDiff
from .merge import MergedNetworks
from .policy import utc_now
from .rules import (
    INBOUND_METER_ID,
    OUTBOUND_METER_ID,
    CLASSIFY_TABLE,
    DROP,
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    FORWARD_TABLE,
    FROM_CAMPUS,
    FROM_OUTSIDE,
    IP_PROTO_TCP,
    POLICY_TABLE,
    UNREADABLE_PORT,
    IpFrag,
    Clause,
    FlowRule,
    Instructions,
    Match,
    drop_and_sample,
    make_cookie,
)

# Priorities inside CLASSIFY_TABLE.
PRIO_UNCLASSIFIABLE = 400
PRIO_UPLINK = 300
PRIO_CAMPUS_SOURCE = 200
PRIO_OUTSIDE_SOURCE = 100
# Priorities inside POLICY_TABLE.
PRIO_CAMPUS_TO_CAMPUS = 400
PRIO_GATEWAY = 300
PRIO_EXCEPTION = 200
PRIO_BLOCK = 100
PRIO_DEFAULT = 0

_GOTO_POLICY = {
    FROM_CAMPUS: Instructions(write_metadata=FROM_CAMPUS, goto_table=POLICY_TABLE),
    FROM_OUTSIDE: Instructions(write_metadata=FROM_OUTSIDE, goto_table=POLICY_TABLE),
}
_GOTO_FORWARD = Instructions(goto_table=FORWARD_TABLE)

# Ethernet types that, after the tags a switch parses, mean it saw no IP
# header: more VLAN tags than it parses (Open vSwitch parses one by
# default, vlan-limit), or an MPLS label stack. A router beyond the border
# that pops them would deliver the SMTP packet inside.
UNCLASSIFIABLE_ETH_TYPES = (
    0x8100,  # 802.1Q tag inside the parsed one
    0x88A8,  # 802.1ad service tag
    0x9100,  # pre-standard QinQ tag
    0x8847,  # MPLS unicast
    0x8848,  # MPLS multicast
)


def compile_switch(policy, dpid, now=None, meters=True, frag_match=True):
    """The complete rule set for switch `dpid` under `policy` at time `now`.

    A switch the policy does not list (when it lists any) is an inside switch:
    it only gets the pass-through and forwarding rules. `meters`: False for
    a switch without meters (blocks drop unsampled); `frag_match`: False for
    one that cannot match ip_frag (smtp_border/pipeline.py)."""
    rules = {make_rule(CLASSIFY_TABLE, PRIO_DEFAULT, Match(), _GOTO_FORWARD, Clause.NOT_SMTP)}
    rules.add(make_rule(FORWARD_TABLE, PRIO_DEFAULT, Match(), Instructions(output_normal=True), Clause.FORWARD))
    spec = policy.switch_spec(dpid)
    if spec is not None:
        rules.update(unclassifiable_rules(frag_match=frag_match))
        exceptions = policy.active_exceptions(now or utc_now())
        # Merged once for both families (cidr_merge is most of the compile time).
        merged = {inbound: merged_exception_networks(exceptions, inbound) for inbound in (True, False)}
        for eth_type in families(policy, spec):
            rules.update(_classify_rules(policy, spec, eth_type))
            rules.update(_policy_rules(policy, merged, eth_type, meters))
        # Only SMTP packets reach the policy table, each marked campus or
        # outside; campus ones all meet a Part 2 block or an allow above, so
        # what falls through is from outside: transit.
        rules.add(_allow(PRIO_DEFAULT, Match(metadata=FROM_OUTSIDE), Clause.TRANSIT))
    return frozenset(rules)


def merged_exception_networks(exceptions, inbound):
    """Networks allowed by exceptions in one direction, adjacent ones merged.

    Merging keeps the flow count down on hardware with small ACL tables; it
    never widens what is allowed (cidr_merge only joins networks whose union
    is exactly one larger network)."""
    wanted = [e.address for e in exceptions if (e.direction.allows_inbound if inbound else e.direction.allows_outbound)]
    return netaddr.cidr_merge(wanted)


def exception_rule(network, inbound):
    """The flow that lets SMTP through for one merged exception network:
    to it from outside (inbound) or from it to outside (outbound)."""
    eth_type = ETH_TYPE_IPV4 if network.version == 4 else ETH_TYPE_IPV6
    if inbound:
        match = Match(metadata=FROM_OUTSIDE, eth_type=eth_type, ip_dst=network)
        return _allow(PRIO_EXCEPTION, match, Clause.EXCEPTION_INBOUND, network)
    match = Match(metadata=FROM_CAMPUS, eth_type=eth_type, ip_src=network)
    return _allow(PRIO_EXCEPTION, match, Clause.EXCEPTION_OUTBOUND, network)


@dataclass(frozen=True)
class NetworkChange:
    """What an exception change does to the merged exception networks:
    (network, inbound) pairs whose flow goes and comes. The same on every
    enforcing switch; each profile renders it as flows (render)."""

    add: Tuple[Tuple[netaddr.IPNetwork, bool], ...]
    delete: Tuple[Tuple[netaddr.IPNetwork, bool], ...]
    applied: Tuple[Tuple[object, bool], ...] = ()  # (exception, added?) in the order applied, for revert

    def __bool__(self):
        return bool(self.add or self.delete)

    def render(self, exception_rule_of):
        """The RuleDiff of a switch whose exception flow for (network,
        inbound) is exception_rule_of(network, inbound)."""
        return RuleDiff(add=tuple(exception_rule_of(n, i) for n, i in self.add),
                        delete=tuple(exception_rule_of(n, i) for n, i in self.delete))


class ExceptionIndex:
    """The merged exception networks of a policy, updated one exception at a
    time, so that a REST change costs the flows it concerns and not a
    recompilation of the whole policy (smtp_border/merge.py)."""

    def __init__(self, policy, now=None):
        active = policy.active_exceptions(now or utc_now())
        self.members = {e.id for e in active}
        self.merged = {
            inbound: MergedNetworks([e.address for e in active if _allows(e, inbound)]) for inbound in (True, False)
        }

    def update(self, added=(), removed=()):
        """Apply exceptions added and removed; returns the NetworkChange
        (exception flows do not depend on the switch, only on its profile)."""
        add, delete, applied = {}, {}, []
        for exception, adding in [(e, False) for e in removed] + [(e, True) for e in added]:
            if adding == (exception.id in self.members):
                continue  # removing one that was not in force (expired), or adding one twice
            applied.append((exception, adding))
            (self.members.add if adding else self.members.discard)(exception.id)
            for inbound in (True, False):
                if _allows(exception, inbound):
                    merged = self.merged[inbound]
                    gone, new = merged.add(exception.address) if adding else merged.remove(exception.address)
                    # The net effect on the switch: a flow removed then made
                    # again in one change (an exception whose direction
                    # widened) is left alone, not re-added with its counters reset.
                    for item in ((n, inbound) for n in gone):
                        if item in add:
                            del add[item]
                        else:
                            delete[item] = None
                    for item in ((n, inbound) for n in new):
                        if item in delete:
                            del delete[item]
                        else:
                            add[item] = None
        # Unsorted: within a change the order of flow mods does not matter
        # (adds go before deletes), and sorting thousands costs more than sending them.
        return NetworkChange(add=tuple(add), delete=tuple(delete), applied=tuple(applied))

    def revert(self, change):
        """Undo `change` (the last update): the merged networks are a function
        of their members, so undoing each step in reverse restores them exactly."""
        for exception, adding in reversed(change.applied):
            (self.members.discard if adding else self.members.add)(exception.id)
            for inbound in (True, False):
                if _allows(exception, inbound):
                    merged = self.merged[inbound]
                    merged.remove(exception.address) if adding else merged.add(exception.address)


def _allows(exception, inbound):
    return exception.direction.allows_inbound if inbound else exception.direction.allows_outbound


def families(policy, spec):
    """Which IP versions need rules. By addresses, only families with a
    campus prefix: without one, no IPv6 packet (say) is from or to campus,
    so every one of them is transit. By port, both: an IPv6 packet from a
    campus-side port is from the campus even where the campus lists no IPv6
    prefix, and Part 2 applies to it."""
    versions = {4, 6} if spec.by_port else {prefix.version for prefix in policy.campus}
    return [ETH_TYPE_IPV4 if v == 4 else ETH_TYPE_IPV6 for v in sorted(versions)]


def in_family(networks, eth_type):
    version = 4 if eth_type == ETH_TYPE_IPV4 else 6
    return [n for n in networks if n.version == version]


def unclassifiable_rules(table=CLASSIFY_TABLE, priority=PRIO_UNCLASSIFIABLE, frag_match=True):
    """Drop, on an enforcing switch, packets whose SMTP port the switch
    cannot see: otherwise they would pass as 'not SMTP' (docs/security.md).

    * More VLAN tags than parsed, or MPLS: see UNCLASSIFIABLE_ETH_TYPES.
    * A TCP first fragment (or unfragmented packet) too short to hold the
      ports: the switch reads port 0. Later fragments carry no ports and pass;
      without their first fragment they reassemble into nothing.
    * An IPv6 packet whose header chain ends before the upper-layer header
      (a first fragment whose extension headers push TCP into a later
      fragment, or a truncated chain): Open vSwitch gives up parsing and
      reports next header 0. RFC 7112 lets a node drop such first fragments.
    """
    for eth_type in UNCLASSIFIABLE_ETH_TYPES:
        yield make_rule(table, priority, Match(eth_type=eth_type), DROP, Clause.UNCLASSIFIABLE, f"{eth_type:#06x}")
    for eth_type in (ETH_TYPE_IPV4, ETH_TYPE_IPV6):
        # A switch that cannot match ip_frag also reads later fragments as
        # port 0 (OpenFlow's "normal" fragment handling): it drops every TCP
        # fragment here. Fail closed; TCP sets Don't Fragment in practice.
        frag = IpFrag.NOT_LATER if frag_match else None
        match = Match(eth_type=eth_type, ip_proto=IP_PROTO_TCP, tcp_dst=UNREADABLE_PORT, ip_frag=frag)
        yield make_rule(table, priority, match, DROP, Clause.UNCLASSIFIABLE, f"{eth_type:#06x}/tcp")
    yield make_rule(table, priority, Match(eth_type=ETH_TYPE_IPV6, ip_proto=0), DROP, Clause.UNCLASSIFIABLE,
                "ipv6-chain")


def _classify_rules(policy, spec, eth_type):
    for port in policy.smtp_ports:
        smtp = dict(eth_type=eth_type, ip_proto=IP_PROTO_TCP, tcp_dst=port)
        for uplink in spec.uplinks:
            yield make_rule(
                CLASSIFY_TABLE, PRIO_UPLINK, Match(in_port=uplink, **smtp), _GOTO_POLICY[FROM_OUTSIDE],
                Clause.FROM_UPLINK, f"{uplink}/{port}",
            )
        if spec.by_port:
            # Not on an uplink: from the campus, whatever the source address says.
            yield make_rule(
                CLASSIFY_TABLE, PRIO_OUTSIDE_SOURCE, Match(**smtp), _GOTO_POLICY[FROM_CAMPUS],
                Clause.NOT_UPLINK, port,
            )
            continue
        for prefix in in_family(policy.campus, eth_type):
            yield make_rule(
                CLASSIFY_TABLE, PRIO_CAMPUS_SOURCE, Match(ip_src=prefix, **smtp), _GOTO_POLICY[FROM_CAMPUS],
                Clause.FROM_CAMPUS_SOURCE, f"{prefix}/{port}",
            )
        yield make_rule(
            CLASSIFY_TABLE, PRIO_OUTSIDE_SOURCE, Match(**smtp), _GOTO_POLICY[FROM_OUTSIDE],
            Clause.FROM_OUTSIDE_SOURCE, port,
        )


def _policy_rules(policy, merged_exceptions, eth_type, meters=True):
    campus = in_family(policy.campus, eth_type)
    from_campus = dict(metadata=FROM_CAMPUS, eth_type=eth_type)
    from_outside = dict(metadata=FROM_OUTSIDE, eth_type=eth_type)

    for prefix in campus:
        yield _allow(PRIO_CAMPUS_TO_CAMPUS, Match(ip_dst=prefix, **from_campus), Clause.CAMPUS_TO_CAMPUS, prefix)

    gateway_networks = netaddr.cidr_merge(a for g in policy.gateways for a in g.addresses)
    for network in in_family(gateway_networks, eth_type):
        yield _allow(PRIO_GATEWAY, Match(ip_dst=network, **from_outside), Clause.GATEWAY_INBOUND, network)
        yield _allow(PRIO_GATEWAY, Match(ip_src=network, **from_campus), Clause.GATEWAY_OUTBOUND, network)

    for inbound in (True, False):
        for network in in_family(merged_exceptions[inbound], eth_type):
            yield exception_rule(network, inbound)

    # Blocked packets are dropped; with auditing on, a metered sample of them
    # also goes to the controller, which logs who tried to reach whom.
    # Each direction has its own meter: a scan from outside cannot starve the
    # record of campus hosts that try to send mail directly.
    inbound, outbound = block_instructions(policy, meters)
    for prefix in campus:
        yield make_rule(POLICY_TABLE, PRIO_BLOCK, Match(ip_dst=prefix, **from_outside), inbound, Clause.PART1_BLOCK, prefix)
    # Campus destinations were allowed above, so what is left from campus goes outside.
    yield make_rule(POLICY_TABLE, PRIO_BLOCK, Match(**from_campus), outbound, Clause.PART2_BLOCK, eth_type)


def block_instructions(policy, meters=True):
    """(Part 1, Part 2) block instructions: drop, and with auditing on (and
    meters on the switch) a metered sample of each direction to the controller."""
    if not (meters and policy.audit.sample_rate):
        return DROP, DROP
    return drop_and_sample(INBOUND_METER_ID), drop_and_sample(OUTBOUND_METER_ID)


def _allow(priority, match, clause, item=""):
    return make_rule(POLICY_TABLE, priority, match, _GOTO_FORWARD, clause, item)


def make_rule(table, priority, match, instructions, clause, item=""):
    return FlowRule(table, priority, match, instructions, make_cookie(clause, item))
