"""Hypothesis strategies: random policies and packets, IPv4 and IPv6.

Addresses are drawn from a few small ranges so that random packets often hit
campus prefixes, gateways and exceptions, and their edges."""
import datetime
import os

import netaddr
from hypothesis import strategies as st

from smtp_border.policy import AuditSpec, Direction, Gateway, MailException, Policy, SwitchSpec
from smtp_border.semantics import IP_PROTO_TCP, IP_PROTO_UDP, Packet

NOW = datetime.datetime(2026, 11, 27, tzinfo=datetime.timezone.utc)
V4_SPACE = netaddr.IPNetwork("10.0.0.0/22")  # campus prefixes and outside addresses both live here
V6_SPACE = netaddr.IPNetwork("fd00::/118")
PORTS = [1, 2, 3, 4]
# The platform matrix (scripts/platforms.sh) sets this to 10: it checks that
# the code runs on another Python or framework, every test included, while
# the logic is proven with the full numbers of examples by `make test` in the
# same CI run. Property tests take a tenth of their examples there.
EXAMPLES_DIVISOR_ENV = "SMTP_BORDER_EXAMPLES_DIVISOR"


def examples(n):
    """How many examples a property test draws: `n`, divided on the matrix."""
    return max(10, n // int(os.environ.get(EXAMPLES_DIVISOR_ENV) or 1))


def addresses(version):
    space = V4_SPACE if version == 4 else V6_SPACE
    return st.integers(0, space.size - 1).map(lambda i: netaddr.IPAddress(space.first + i, version))


def networks_in(parent):
    """A network inside `parent` (the parent itself included)."""
    width = 32 if parent.version == 4 else 128
    return st.integers(parent.prefixlen, width).flatmap(
        lambda length: st.integers(0, 2 ** (length - parent.prefixlen) - 1).map(
            lambda i: netaddr.IPNetwork(f"{netaddr.IPAddress(parent.first + (i << (width - length)), parent.version)}/{length}")
        )
    )


def campus_prefixes():
    v4 = networks_in(V4_SPACE).filter(lambda n: n.prefixlen >= 23)
    v6 = networks_in(V6_SPACE).filter(lambda n: n.prefixlen >= 119)
    return st.lists(st.one_of(v4, v6), min_size=1, max_size=3, unique=True).filter(
        lambda nets: not any(a != b and (a in b or b in a) for a in nets for b in nets)
    )


@st.composite
def policies(draw):
    campus = tuple(draw(campus_prefixes()))
    inside = st.sampled_from(campus).flatmap(networks_in)
    gateways = tuple(
        Gateway(name=f"g{i}", addresses=tuple(draw(st.lists(inside, min_size=1, max_size=2, unique=True))))
        for i in range(draw(st.integers(0, 2)))
    )
    exception_addresses = draw(st.lists(inside, max_size=6, unique=True))
    exceptions = tuple(
        MailException(
            address=address,
            direction=draw(st.sampled_from(list(Direction))),
            reason="r",
            expires=draw(st.sampled_from([None, NOW - datetime.timedelta(days=1), NOW + datetime.timedelta(days=1)])),
        )
        for address in exception_addresses
    )
    switches = draw(st.one_of(
        st.none(),
        st.lists(st.integers(1, 3), unique=True, max_size=3).flatmap(
            lambda dpids: st.tuples(*[
                st.one_of(
                    # a border switch by its uplinks, by addresses alone, or an access switch
                    st.lists(st.sampled_from(PORTS), unique=True, min_size=1, max_size=2).map(
                        lambda uplinks, d=d: SwitchSpec(dpid=d, uplinks=tuple(uplinks))),
                    st.booleans().map(lambda access, d=d: SwitchSpec(dpid=d, uplinks=(), access=access)),
                )
                for d in dpids
            ])
        ),
    ))
    return Policy(
        campus=campus,
        smtp_ports=tuple(draw(st.lists(st.sampled_from([25, 465, 587, 2525]), min_size=1, max_size=2, unique=True))),
        gateways=gateways,
        exceptions=exceptions,
        switches=switches,
        audit=AuditSpec(sample_rate=draw(st.sampled_from([0, 10]))),
    )


def interesting_addresses(policy, version):
    """The edges of every network the policy names: where off-by-one and
    priority mistakes show."""
    networks = list(policy.campus) + [a for g in policy.gateways for a in g.addresses] + [e.address for e in policy.exceptions]
    found = set()
    for network in networks:
        if network.version == version:
            found.update({network[0], network[-1], netaddr.IPAddress(network.first + network.size // 2, version)})
            for neighbour in (network.first - 1, network.last + 1):
                if 0 <= neighbour < 2 ** (32 if version == 4 else 128):
                    found.add(netaddr.IPAddress(neighbour, version))
    return sorted(found)


def switch_of(policy):
    """A dpid to compile for: mostly an enforcing switch, sometimes any."""
    listed = [s.dpid for s in policy.switches or ()]
    return st.one_of(st.sampled_from(listed), st.integers(1, 4)) if listed else st.integers(1, 4)


# 0: what a switch reads from a TCP header too short to hold the ports.
OTHER_PORTS = [25, 465, 587, 2525, 80, 0]


@st.composite
def packets(draw, policy=None, dpid=None):
    version = draw(st.sampled_from([4, 6]))
    spec = policy.switch_spec(dpid) if policy is not None and dpid is not None else None
    uplinks = list(spec.uplinks) if spec else []
    choices = interesting_addresses(policy, version) if policy is not None else []
    address = st.one_of(addresses(version), st.sampled_from(choices)) if choices else addresses(version)
    return Packet(
        in_port=draw(st.one_of(st.sampled_from(PORTS), st.sampled_from(uplinks)) if uplinks else st.sampled_from(PORTS)),
        src=draw(address),
        dst=draw(address),
        ip_proto=draw(st.sampled_from([IP_PROTO_TCP, IP_PROTO_TCP, IP_PROTO_TCP, IP_PROTO_UDP])),
        dst_port=draw(st.one_of(st.sampled_from(policy.smtp_ports), st.sampled_from(OTHER_PORTS))
                      if policy is not None else st.sampled_from(OTHER_PORTS)),
        # Mostly whole packets; fragments, where only the first carries ports.
        fragment=draw(st.sampled_from(["no"] * 6 + ["first", "later"])),
    )
