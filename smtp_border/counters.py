"""Blocked-attempt counters that never go down, though the flows behind them come and go.

The exact counts of blocked packets are the counters of the block flows on
each switch. Those restart at zero whenever a flow is replaced (a reload
that changes a campus prefix, a switch that restarts) or removed, and a
Prometheus counter that falls reads as a reset. So each switch's totals are
kept here: what its block flows count now, plus everything counted by block
flows it no longer has (their last reading). Between the last reading and a
flow's removal a few packets can go uncounted; the controller reads the block
flows at every scrape and before every change that replaces them, so that is
at most what arrived since the last of those.
"""
import collections


class BlockCounters:
    def __init__(self):
        self._last = {}  # (dpid, flow key) -> (direction, packets, bytes) at the last reading
        self._gone = collections.Counter()  # (dpid, direction, "packets"|"bytes") -> counted by flows gone

    def observe(self, dpid, flows):
        """A complete reading of switch `dpid`'s block flows: (key, direction,
        packets, bytes) for each. A flow missing from it is gone; a flow whose
        counts went down was replaced."""
        seen = set()
        for key, direction, packets, octets in flows:
            last = self._last.get((dpid, key))
            if last is not None and (packets < last[1] or octets < last[2]):
                self._retire(dpid, last)
            self._last[dpid, key] = (direction, packets, octets)
            seen.add(key)
        for (switch, key), last in list(self._last.items()):
            if switch == dpid and key not in seen:
                self._retire(dpid, last)
                del self._last[switch, key]

    def _retire(self, dpid, last):
        direction, packets, octets = last
        self._gone[dpid, direction, "packets"] += packets
        self._gone[dpid, direction, "bytes"] += octets

    def totals(self):
        """{(dpid, direction): (packets, bytes)} for every switch ever read."""
        totals = collections.defaultdict(lambda: [0, 0])
        for (dpid, direction, kind), count in self._gone.items():
            totals[dpid, direction][kind == "bytes"] += count
        for (dpid, _), (direction, packets, octets) in self._last.items():
            total = totals[dpid, direction]
            total[0] += packets
            total[1] += octets
        return {key: tuple(value) for key, value in totals.items()}
