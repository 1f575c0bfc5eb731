"""The record of blocked SMTP connection attempts.

Blocked packets are counted exactly by the switches' flow counters. On top of
that the drop flows send a metered sample of them to the controller; each
sampled SYN (a connection attempt) becomes one BlockedAttempt, appended to a
JSON-lines file and kept in memory for the REST API. Samples are capped per
switch, so the record says who tried and roughly how often, not exactly how
many times: that is what the counters are for.
"""
import collections
import datetime
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .rules import Clause

DIRECTIONS = {
    Clause.PART1_BLOCK: ("inbound", "Part 1: outside host to a campus host's SMTP port"),
    Clause.PART2_BLOCK: ("outbound", "Part 2: campus host to an outside host's SMTP port"),
    # Counted, never sampled: the switch could not read these packets' headers.
    Clause.UNCLASSIFIABLE: ("unclassifiable", "a packet whose SMTP port the switch cannot see"),
}
SAMPLED = (Clause.PART1_BLOCK, Clause.PART2_BLOCK)  # the drop flows that send samples
MEMORY = 100_000  # attempts kept in memory for the API
# A SYN with the same addresses and ports within this time is the client
# retransmitting, not a new attempt (Linux gives up after about two minutes).
RETRANSMISSION_WINDOW = datetime.timedelta(seconds=130)
RELOAD_BYTES = 32 * 1024 * 1024
# Connections remembered to tell retransmitted SYNs: at the default sample
# rate (10 per second per switch) a retransmission window holds about 1,300
# per switch; this bounds it (about 200 bytes each) whatever arrives.
CONNECTIONS_REMEMBERED = 50_000  # how much of an existing log is read back at start-up


@dataclass(frozen=True)
class BlockedAttempt:
    time: str  # ISO 8601, UTC
    switch: str  # dpid, 16 hex digits
    in_port: int
    src: str
    dst: str
    src_port: int
    dst_port: int
    direction: str  # inbound (Part 1) | outbound (Part 2)
    clause: str

    @property
    def moment(self):
        return parse_time(self.time)


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_time(moment):
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attempt_from_sample(clause, dpid, in_port, src, dst, src_port, dst_port, now):
    """A BlockedAttempt for a sampled packet, or None if its clause is not a block."""
    if clause not in SAMPLED:
        return None
    direction, text = DIRECTIONS[clause]
    return BlockedAttempt(
        time=format_time(now), switch=f"{dpid:016x}", in_port=in_port, src=str(src), dst=str(dst),
        src_port=src_port, dst_port=dst_port, direction=direction, clause=text,
    )


class AuditLog:
    def __init__(self, path, memory=MEMORY):
        self.path = Path(path)
        self.recent = collections.deque(maxlen=memory)
        self.recent.extend(self._read_back())
        self._last_seen = collections.OrderedDict()  # connection 4-tuple -> time of its first SYN

    def record(self, attempt):
        """Keep and log a new attempt; returns False for a retransmitted SYN."""
        moment = attempt.moment
        while self._last_seen and next(iter(self._last_seen.values())) < moment - RETRANSMISSION_WINDOW:
            self._last_seen.popitem(last=False)
        connection = (attempt.src, attempt.src_port, attempt.dst, attempt.dst_port)
        if connection in self._last_seen:
            return False
        self._last_seen[connection] = moment
        if len(self._last_seen) > CONNECTIONS_REMEMBERED:
            self._last_seen.popitem(last=False)  # bounded, oldest first, whatever the rate of new sources
        self.recent.append(attempt)
        # One line per attempt, flushed at once: `tail -f` and log shippers
        # see it immediately, and a crash loses at most the line being written.
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(asdict(attempt), sort_keys=True) + "\n")
        return True

    def query(self, since=None, limit=100):
        """Attempts at or after `since`, newest first, at most `limit`."""
        result = []
        for attempt in reversed(self.recent):
            if since is not None and attempt.moment < since:
                break
            result.append(attempt)
            if len(result) >= limit:
                break
        return result

    def top(self, since, limit=20):
        """Campus hosts by blocked outbound attempts and outside sources by
        blocked inbound attempts, since `since`."""
        counts = {"outbound": collections.Counter(), "inbound": collections.Counter()}
        for attempt in reversed(self.recent):
            if attempt.moment < since:
                break
            counts[attempt.direction][attempt.src] += 1
        return {
            direction: [{"address": a, "attempts": n} for a, n in counter.most_common(limit)]
            for direction, counter in counts.items()
        }

    def _read_back(self):
        """The tail of an existing log, so that a restart keeps today's record."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        attempts = []
        with open(self.path, "rb") as stream:
            stream.seek(max(0, size - RELOAD_BYTES))
            if size > RELOAD_BYTES:
                stream.readline()  # skip a partial first line
            for line in stream:
                try:
                    attempts.append(BlockedAttempt(**json.loads(line)))
                except (ValueError, TypeError):
                    continue  # a torn last line after a crash, or a foreign line
        return attempts


def default_log_path(policy_path, configured=None):
    """audit.log from the policy, relative to the policy file; by default
    policy.yaml -> policy.blocked.jsonl beside it."""
    policy_path = Path(policy_path)
    if configured:
        return Path(os.path.join(policy_path.parent, configured))
    return policy_path.with_name(f"{policy_path.stem}.blocked.jsonl")
