"""Incremental merging gives exactly what cidr_merge gives, after any sequence
of additions and removals, IPv4 and IPv6 mixed."""
import netaddr
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_border.merge import MergedNetworks

from strategies import V4_SPACE, V6_SPACE, networks_in, examples

NETWORKS = st.one_of(networks_in(V4_SPACE).filter(lambda n: n.prefixlen >= 26),
                     networks_in(V6_SPACE).filter(lambda n: n.prefixlen >= 122))


@settings(max_examples=examples(400), deadline=None)
@given(start=st.lists(NETWORKS, max_size=20), steps=st.lists(st.tuples(st.booleans(), NETWORKS), max_size=30))
def test_incremental_merge_equals_cidr_merge(start, steps):
    members = list(start)
    merged = MergedNetworks(members)
    blocks = set(netaddr.cidr_merge(members))
    for adding, network in steps:
        if adding:
            removed, added = merged.add(network)
            members.append(network)
        elif network in members:
            removed, added = merged.remove(network)
            members.remove(network)
        else:
            continue
        expected = set(netaddr.cidr_merge(members))
        # What changed is exactly the difference, and the blocks are cidr_merge's.
        assert (removed, added) == (blocks - expected, expected - blocks)
        assert merged.blocks == expected
        blocks = expected


def test_buddies_join_and_split():
    merged = MergedNetworks([netaddr.IPNetwork("10.0.0.0/32")])
    assert merged.add(netaddr.IPNetwork("10.0.0.1/32")) == (
        {netaddr.IPNetwork("10.0.0.0/32")}, {netaddr.IPNetwork("10.0.0.0/31")})
    assert merged.remove(netaddr.IPNetwork("10.0.0.0/32")) == (
        {netaddr.IPNetwork("10.0.0.0/31")}, {netaddr.IPNetwork("10.0.0.1/32")})
    assert merged.add(netaddr.IPNetwork("10.0.0.0/24")) == (
        {netaddr.IPNetwork("10.0.0.1/32")}, {netaddr.IPNetwork("10.0.0.0/24")})
    assert merged.add(netaddr.IPNetwork("10.0.0.7/32")) == (set(), set())  # already covered
