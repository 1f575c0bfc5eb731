"""The policy in one flow table, for switches that cannot run three (issue 14).

Many campus edge switches have no write-metadata or goto-table, or a single
hardware table (docs/hardware.md, to come). Here the whole policy is one
table of priorities; a matched allow is NORMAL forwarding, a matched block a
drop (sampled through the meter of its direction when auditing is on), and
a packet nothing matches is forwarded (table-miss flow, priority 0).

This is the compiler's half of the `single_table` profile: pure, tested
against the reference semantics (tests/unit/test_single_table.py) and on
Open vSwitch (tests/integration/test_ovs_trace.py). The Ryu app does not
select it yet: per-switch profiles, the exception index and the delivery
path for it are issue 14's next steps.

By port (a switch with uplinks, or an access switch), highest first:

  500  what the switch cannot classify                         drop
  400  to a gateway or an inbound exception                    allow
  300  on an uplink, TCP to an SMTP port, to a campus prefix   drop (Part 1)
  290  on an uplink, anything else                             allow (outside to outside)
  200  from a gateway or an outbound exception                 allow
  150  to a campus prefix                                      allow (campus to campus)
  100  TCP to an SMTP port                                     drop (Part 2)
    0  anything else                                           allow

By addresses alone:

  500  what the switch cannot classify                         drop
  400  to a gateway or an inbound exception                    allow
  300  from a gateway or an outbound exception                 allow
  250  from a campus prefix to a campus prefix                 allow
  200  TCP to an SMTP port from a campus prefix                drop (Part 2)
  190  TCP to an SMTP port to a campus prefix                  drop (Part 1)
    0  anything else                                           allow

Allows match no port: whatever they let through, non-SMTP traffic gets
anyway. So an exception costs one flow whatever the number of SMTP ports and
uplinks (as in multi_table); what grows with uplinks x SMTP ports is only
the Part 1 drop per campus prefix, plus one flow per uplink. The shipped
policy is 24 flows here against 29 in three tables.
"""
import netaddr

from .compiler import _families, _in_family, _rule, _unclassifiable_rules, merged_exception_networks
from .policy import utc_now
from .rules import DROP, INBOUND_METER_ID, IP_PROTO_TCP, OUTBOUND_METER_ID, Clause, Instructions, Match, drop_and_sample

PRIO_UNCLASSIFIABLE = 500
PRIO_TO_ALLOWED = 400
PRIO_PART1_BY_PORT = 300
PRIO_UPLINK = 290
PRIO_FROM_ALLOWED = 200
PRIO_CAMPUS_TO_CAMPUS = 150
PRIO_PART2_BY_PORT = 100
# By addresses alone.
PRIO_FROM_ALLOWED_BY_ADDRESS = 300
PRIO_CAMPUS_PAIR = 250
PRIO_PART2_BY_ADDRESS = 200
PRIO_PART1_BY_ADDRESS = 190
PRIO_DEFAULT = 0

NORMAL = Instructions(output_normal=True)


def compile_single_table(policy, dpid, now=None, table=0):
    """The complete rule set of switch `dpid` in one table (`table`: 0, or
    the fixed id of a switch's ACL table)."""
    rules = {_rule(table, PRIO_DEFAULT, Match(), NORMAL, Clause.FORWARD)}
    spec = policy.switch_spec(dpid)
    if spec is None:
        return frozenset(rules)
    rules.update(_unclassifiable_rules(table, PRIO_UNCLASSIFIABLE))
    exceptions = policy.active_exceptions(now or utc_now())
    merged = {inbound: merged_exception_networks(exceptions, inbound) for inbound in (True, False)}
    gateways = netaddr.cidr_merge(a for g in policy.gateways for a in g.addresses)
    sampled = bool(policy.audit.sample_rate)
    part1 = drop_and_sample(INBOUND_METER_ID) if sampled else DROP
    part2 = drop_and_sample(OUTBOUND_METER_ID) if sampled else DROP
    by_port = spec.by_port
    for uplink in spec.uplinks:  # what arrives on an uplink and is not blocked below is outside to outside
        rules.add(_rule(table, PRIO_UPLINK, Match(in_port=uplink), NORMAL, Clause.FROM_UPLINK, uplink))
    for eth_type in _families(policy, spec):
        campus = _in_family(policy.campus, eth_type)
        family = dict(eth_type=eth_type)
        smtp = [dict(eth_type=eth_type, ip_proto=IP_PROTO_TCP, tcp_dst=port) for port in policy.smtp_ports]
        # To a gateway or an inbound exception, and from a gateway or an
        # outbound exception: a gateway's flow where a network is both.
        for inbound, field, clauses in ((True, "ip_dst", (Clause.GATEWAY_INBOUND, Clause.EXCEPTION_INBOUND)),
                                        (False, "ip_src", (Clause.GATEWAY_OUTBOUND, Clause.EXCEPTION_OUTBOUND))):
            priority = PRIO_TO_ALLOWED if inbound else (PRIO_FROM_ALLOWED if by_port else PRIO_FROM_ALLOWED_BY_ADDRESS)
            allowed = {n: clauses[1] for n in _in_family(merged[inbound], eth_type)}
            allowed.update({n: clauses[0] for n in _in_family(gateways, eth_type)})
            for network, clause in allowed.items():
                rules.add(_rule(table, priority, Match(**family, **{field: network}), NORMAL, clause, network))
        if by_port:
            for uplink in spec.uplinks:
                for match in smtp:
                    for prefix in campus:
                        rules.add(_rule(table, PRIO_PART1_BY_PORT, Match(in_port=uplink, ip_dst=prefix, **match), part1,
                                        Clause.PART1_BLOCK, f"{uplink}/{match['tcp_dst']}/{prefix}"))
            for prefix in campus:
                rules.add(_rule(table, PRIO_CAMPUS_TO_CAMPUS, Match(ip_dst=prefix, **family), NORMAL,
                                Clause.CAMPUS_TO_CAMPUS, prefix))
            for match in smtp:
                rules.add(_rule(table, PRIO_PART2_BY_PORT, Match(**match), part2, Clause.PART2_BLOCK,
                                f"{eth_type:#06x}/{match['tcp_dst']}"))
        else:
            for source in campus:
                for destination in campus:
                    rules.add(_rule(table, PRIO_CAMPUS_PAIR, Match(ip_src=source, ip_dst=destination, **family), NORMAL,
                                    Clause.CAMPUS_TO_CAMPUS, f"{source}>{destination}"))
            for match in smtp:
                for prefix in campus:
                    rules.add(_rule(table, PRIO_PART2_BY_ADDRESS, Match(ip_src=prefix, **match), part2,
                                    Clause.PART2_BLOCK, f"{match['tcp_dst']}/{prefix}"))
                    rules.add(_rule(table, PRIO_PART1_BY_ADDRESS, Match(ip_dst=prefix, **match), part1,
                                    Clause.PART1_BLOCK, f"{match['tcp_dst']}/{prefix}"))
    return frozenset(rules)
