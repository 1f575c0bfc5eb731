"""Merged exception networks, kept up to date one exception at a time.

The compiler merges the exception networks of one direction with netaddr's
cidr_merge, so the flows match the fewest blocks that cover exactly the same
addresses. Recomputing that for ten thousand exceptions at every REST change
costs far more than the change itself; this keeps the merged blocks and
updates them locally: adding a network drops the blocks it covers and joins
it with its buddy block while there is one; removing one re-merges only the
members of the block that held it. The result is always what cidr_merge would
give for the same members (tests/test_merge.py checks that).
"""
import bisect

import netaddr


class MergedNetworks:
    def __init__(self, networks=()):
        self._members = sorted(_key(n) for n in networks)  # (first, prefixlen, version), with repeats
        self._blocks = {_key(n) for n in netaddr.cidr_merge(list(networks))}
        self._ordered = sorted(self._blocks)  # the same blocks, for range queries

    @property
    def blocks(self):
        return {_network(k) for k in self._blocks}

    def add(self, network):
        """Add a member; returns (blocks removed, blocks added)."""
        key = _key(network)
        bisect.insort(self._members, key)
        if self._covering_block(key) is not None:
            return set(), set()
        removed = set(_within(self._ordered, key))
        while key[1] > 0:
            buddy = _buddy(key)
            if buddy not in self._blocks:
                break
            removed.add(buddy)
            key = _parent(key)
        self._replace(removed, {key})
        return {_network(k) for k in removed}, {_network(key)}

    def remove(self, network):
        """Remove a member (it must be one); returns (blocks removed, blocks added)."""
        key = _key(network)
        index = bisect.bisect_left(self._members, key)
        if self._members[index:index + 1] != [key]:
            raise ValueError(f"{network} is not a member")
        del self._members[index]
        block = self._covering_block(key)
        inside = [_network(m) for m in _within(self._members, block)]
        merged = {_key(n) for n in netaddr.cidr_merge(inside)}
        if merged == {block}:
            return set(), set()
        self._replace({block}, merged)
        return {_network(block)}, {_network(k) for k in merged}

    def _replace(self, removed, added):
        for key in removed:
            self._blocks.discard(key)
            del self._ordered[bisect.bisect_left(self._ordered, key)]
        for key in added:
            self._blocks.add(key)
            bisect.insort(self._ordered, key)

    def _covering_block(self, key):
        first, length, version = key
        width = _width(version)
        for parent_length in range(length, -1, -1):
            candidate = (first >> (width - parent_length) << (width - parent_length) if parent_length else 0,
                         parent_length, version)
            if candidate in self._blocks:
                return candidate
        return None


def _within(ordered, outer):
    """The keys of a sorted list that lie inside `outer`."""
    last = _last(outer)
    # By index, not a slice: slicing would copy the rest of a 10,000-key list.
    for index in range(bisect.bisect_left(ordered, (outer[0], -1, -1)), len(ordered)):
        key = ordered[index]
        if key[0] > last:
            break
        if _inside(outer, key):
            yield key


def _key(network):
    if not isinstance(network, netaddr.IPNetwork):
        network = netaddr.IPNetwork(network)
    return (network.first, network.prefixlen, network.version)


def _network(key):
    first, length, version = key
    # From integers, not text: a tenth of the cost, and batches build thousands.
    return netaddr.IPNetwork((first, length), version=version)


def _width(version):
    return 32 if version == 4 else 128


def _last(key):
    first, length, version = key
    return first + (1 << (_width(version) - length)) - 1


def _inside(outer, inner):
    return outer[2] == inner[2] and outer[1] <= inner[1] and outer[0] <= inner[0] <= _last(outer)


def _buddy(key):
    first, length, version = key
    return (first ^ (1 << (_width(version) - length)), length, version)


def _parent(key):
    first, length, version = key
    size = 1 << (_width(version) - length + 1)
    return (first - first % size, length - 1, version)
