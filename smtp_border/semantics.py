"""The policy's meaning, written straight from the policy text, with no flow tables.

This is the reference the compiled rules are tested against (tests/flowsim.py
evaluates rules the way an OpenFlow switch does). Keep it obvious rather than
fast: it must read like the policy.
"""
from dataclasses import dataclass
from typing import Optional

import netaddr

from .policy import utc_now
from .rules import IP_PROTO_TCP, UNREADABLE_PORT

IP_PROTO_UDP = 17


@dataclass(frozen=True)
class Packet:
    in_port: int
    src: netaddr.IPAddress
    dst: netaddr.IPAddress
    ip_proto: int = IP_PROTO_TCP
    dst_port: Optional[int] = None  # as the switch reads it: UNREADABLE_PORT if it cannot
    fragment: str = "no"  # "no", "first" (offset 0, more follow) or "later" (no transport header)


def is_allowed(policy, dpid, packet, now=None):
    """Does switch `dpid` let `packet` through under `policy`?"""
    spec = policy.switch_spec(dpid)
    if spec is None:
        return True  # an inside switch forwards everything
    if packet.fragment == "later":
        return True  # no ports of its own: it goes with its first fragment, judged below
    if packet.ip_proto == IP_PROTO_TCP and packet.dst_port == UNREADABLE_PORT:
        return False  # the port may be 25: a border that cannot see it does not let it through
    if packet.ip_proto != IP_PROTO_TCP or packet.dst_port not in policy.smtp_ports:
        return True  # the policy is about connections to the SMTP port only
    if spec.by_port:
        # Uplinks known (or none: an access switch): the arrival port decides.
        from_outside = packet.in_port in spec.uplinks
    else:
        # Addresses alone: a campus source address is campus.
        from_outside = not policy.is_campus(packet.src)
    to_campus = policy.is_campus(packet.dst)
    exceptions = policy.active_exceptions(now or utc_now())
    gateways = [a for g in policy.gateways for a in g.addresses]

    if not from_outside and to_campus:
        return True  # campus to campus
    if not from_outside:  # Part 2: campus to outside
        allowed = gateways + [e.address for e in exceptions if e.direction.allows_outbound]
        return any(packet.src in n for n in allowed)
    if to_campus:  # Part 1: outside to campus
        allowed = gateways + [e.address for e in exceptions if e.direction.allows_inbound]
        return any(packet.dst in n for n in allowed)
    return True  # outside to outside: transit, not the campus's mail
