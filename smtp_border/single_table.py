"""The policy in one flow table, for switches that cannot run three (issue 14).

Many campus edge switches have no write-metadata or goto-table, or a single
hardware table (docs/hardware.md, to come). Here the whole policy is one
table of priorities; a matched allow is NORMAL forwarding, a matched block a
drop (sampled through the meter of its direction when auditing is on), and
a packet nothing matches is forwarded (table-miss flow, priority 0).

The `single_table` profile of smtp_border/pipeline.py: pure, tested
against the reference semantics (tests/unit/test_single_table.py) and on
Open vSwitch (tests/integration/test_ovs_trace.py, test_campus_mininet.py).

By port (a switch with uplinks, or an access switch), highest first:

  500  what the switch cannot classify                         drop
  410  to a gateway                                            allow
  400  to an inbound exception                                 allow
  300  on an uplink, TCP to an SMTP port, to a campus prefix   drop (Part 1)
  290  on an uplink, anything else                             allow (outside to outside)
  210  from a gateway                                          allow
  200  from an outbound exception                              allow
  150  to a campus prefix                                      allow (campus to campus)
  100  TCP to an SMTP port                                     drop (Part 2)
    0  anything else                                           allow

By addresses alone:

  500  what the switch cannot classify                         drop
  410  to a gateway                                            allow
  400  to an inbound exception                                 allow
  310  from a gateway                                          allow
  300  from an outbound exception                              allow
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

from .compiler import block_instructions, families, in_family, make_rule, merged_exception_networks, unclassifiable_rules
from .policy import utc_now
from .rules import ETH_TYPE_IPV4, ETH_TYPE_IPV6, IP_PROTO_TCP, Clause, Instructions, Match

PRIO_UNCLASSIFIABLE = 500
# A gateway's flow sits one above an exception's: a network that is both has
# two flows (as in multi_table), so adding or removing the exception never
# touches the gateway's.
PRIO_TO_GATEWAY = 410
PRIO_TO_EXCEPTION = 400
PRIO_PART1_BY_PORT = 300
PRIO_UPLINK = 290
PRIO_FROM_GATEWAY = 210
PRIO_FROM_EXCEPTION = 200
PRIO_CAMPUS_TO_CAMPUS = 150
PRIO_PART2_BY_PORT = 100
# By addresses alone.
PRIO_FROM_GATEWAY_BY_ADDRESS = 310
PRIO_FROM_EXCEPTION_BY_ADDRESS = 300
PRIO_CAMPUS_PAIR = 250
PRIO_PART2_BY_ADDRESS = 200
PRIO_PART1_BY_ADDRESS = 190
PRIO_DEFAULT = 0

NORMAL = Instructions(output_normal=True)


def compile_single_table(policy, dpid, now=None, table=0, meters=True, frag_match=True):
    """The complete rule set of switch `dpid` in one table (`table`: 0, or
    the fixed id of a switch's ACL table); `meters` and `frag_match` as in
    compiler.compile_switch."""
    rules = {make_rule(table, PRIO_DEFAULT, Match(), NORMAL, Clause.FORWARD)}
    spec = policy.switch_spec(dpid)
    if spec is None:
        return frozenset(rules)
    rules.update(unclassifiable_rules(table, PRIO_UNCLASSIFIABLE, frag_match))
    exceptions = policy.active_exceptions(now or utc_now())
    merged = {inbound: merged_exception_networks(exceptions, inbound) for inbound in (True, False)}
    gateways = netaddr.cidr_merge(a for g in policy.gateways for a in g.addresses)
    part1, part2 = block_instructions(policy, meters)
    by_port = spec.by_port
    for uplink in spec.uplinks:  # what arrives on an uplink and is not blocked below is outside to outside
        rules.add(make_rule(table, PRIO_UPLINK, Match(in_port=uplink), NORMAL, Clause.FROM_UPLINK, uplink))
    for eth_type in families(policy, spec):
        campus = in_family(policy.campus, eth_type)
        family = dict(eth_type=eth_type)
        smtp = [dict(eth_type=eth_type, ip_proto=IP_PROTO_TCP, tcp_dst=port) for port in policy.smtp_ports]
        for network in in_family(gateways, eth_type):
            rules.add(make_rule(table, PRIO_TO_GATEWAY, Match(ip_dst=network, **family), NORMAL,
                                Clause.GATEWAY_INBOUND, network))
            rules.add(make_rule(table, PRIO_FROM_GATEWAY if by_port else PRIO_FROM_GATEWAY_BY_ADDRESS,
                                Match(ip_src=network, **family), NORMAL, Clause.GATEWAY_OUTBOUND, network))
        for inbound in (True, False):
            for network in in_family(merged[inbound], eth_type):
                rules.add(single_table_exception_rule(network, inbound, by_port, table))
        if by_port:
            for uplink in spec.uplinks:
                for match in smtp:
                    for prefix in campus:
                        rules.add(make_rule(table, PRIO_PART1_BY_PORT, Match(in_port=uplink, ip_dst=prefix, **match),
                                            part1, Clause.PART1_BLOCK, f"{uplink}/{match['tcp_dst']}/{prefix}"))
            for prefix in campus:
                rules.add(make_rule(table, PRIO_CAMPUS_TO_CAMPUS, Match(ip_dst=prefix, **family), NORMAL,
                                    Clause.CAMPUS_TO_CAMPUS, prefix))
            for match in smtp:
                rules.add(make_rule(table, PRIO_PART2_BY_PORT, Match(**match), part2, Clause.PART2_BLOCK,
                                    f"{eth_type:#06x}/{match['tcp_dst']}"))
        else:
            for source in campus:
                for destination in campus:
                    rules.add(make_rule(table, PRIO_CAMPUS_PAIR, Match(ip_src=source, ip_dst=destination, **family),
                                        NORMAL, Clause.CAMPUS_TO_CAMPUS, f"{source}>{destination}"))
            for match in smtp:
                for prefix in campus:
                    rules.add(make_rule(table, PRIO_PART2_BY_ADDRESS, Match(ip_src=prefix, **match), part2,
                                        Clause.PART2_BLOCK, f"{match['tcp_dst']}/{prefix}"))
                    rules.add(make_rule(table, PRIO_PART1_BY_ADDRESS, Match(ip_dst=prefix, **match), part1,
                                        Clause.PART1_BLOCK, f"{match['tcp_dst']}/{prefix}"))
    return frozenset(rules)


def single_table_exception_rule(network, inbound, by_port, table=0):
    """The one flow of a merged exception network: to it (inbound) or from
    it (outbound), any port, above the blocks it opens."""
    eth_type = ETH_TYPE_IPV4 if network.version == 4 else ETH_TYPE_IPV6
    if inbound:
        return make_rule(table, PRIO_TO_EXCEPTION, Match(eth_type=eth_type, ip_dst=network), NORMAL,
                         Clause.EXCEPTION_INBOUND, network)
    priority = PRIO_FROM_EXCEPTION if by_port else PRIO_FROM_EXCEPTION_BY_ADDRESS
    return make_rule(table, priority, Match(eth_type=eth_type, ip_src=network), NORMAL, Clause.EXCEPTION_OUTBOUND,
                     network)
