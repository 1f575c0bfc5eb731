"""The blocked-attempt record and the mail-server inventory (no switches)."""
import datetime
import json

import pytest

from smtp_border.audit import AuditLog, attempt_from_sample, default_log_path, format_time
from smtp_border.inventory import inventory
from smtp_border.policy import parse_policy
from smtp_border.rules import Clause

T0 = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.timezone.utc)


def attempt(clause=Clause.PART2_BLOCK, src="10.20.3.10", src_port=40000, dst="198.51.100.25", at=T0):
    return attempt_from_sample(clause, 1, 2, src, dst, src_port, 25, at)


def test_sample_becomes_an_attempt_with_direction_and_clause():
    outbound = attempt()
    assert (outbound.direction, outbound.switch, outbound.in_port) == ("outbound", "0000000000000001", 2)
    assert outbound.clause.startswith("Part 2")
    assert outbound.time == "2026-11-27T12:00:00.000Z"
    inbound = attempt(Clause.PART1_BLOCK, src="203.0.113.10", dst="10.20.3.10")
    assert (inbound.direction, inbound.clause[:6]) == ("inbound", "Part 1")
    assert attempt_from_sample(Clause.CAMPUS_TO_CAMPUS, 1, 2, "a", "b", 1, 25, T0) is None
    assert attempt_from_sample(None, 1, 2, "a", "b", 1, 25, T0) is None


def test_record_writes_json_lines_and_skips_retransmissions(tmp_path):
    log = AuditLog(tmp_path / "blocked.jsonl")
    assert log.record(attempt())
    assert not log.record(attempt(at=T0 + datetime.timedelta(seconds=3)))  # the same SYN again
    assert log.record(attempt(src_port=40001, at=T0 + datetime.timedelta(seconds=4)))  # a new connection
    assert log.record(attempt(at=T0 + datetime.timedelta(minutes=5)))  # the port reused much later
    lines = [json.loads(line) for line in (tmp_path / "blocked.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    assert set(lines[0]) == {"time", "switch", "in_port", "src", "dst", "src_port", "dst_port", "direction", "clause"}


def test_query_and_top(tmp_path):
    log = AuditLog(tmp_path / "blocked.jsonl")
    minute = datetime.timedelta(minutes=1)
    for i in range(5):
        log.record(attempt(src_port=40000 + i, at=T0 + i * minute))
    log.record(attempt(src="10.20.3.11", at=T0 + 5 * minute))
    log.record(attempt(Clause.PART1_BLOCK, src="203.0.113.10", dst="10.20.3.10", at=T0 + 6 * minute))
    assert [a.src for a in log.query(limit=2)] == ["203.0.113.10", "10.20.3.11"]  # newest first
    assert [a.src_port for a in log.query(since=T0 + 4 * minute)] == [40000, 40000, 40004]
    ranking = log.top(T0 - datetime.timedelta(hours=1))
    assert ranking["outbound"] == [{"address": "10.20.3.10", "attempts": 5}, {"address": "10.20.3.11", "attempts": 1}]
    assert ranking["inbound"] == [{"address": "203.0.113.10", "attempts": 1}]
    assert log.top(T0 + 5 * minute)["outbound"] == [{"address": "10.20.3.11", "attempts": 1}]


def test_restart_reads_the_log_back_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "blocked.jsonl"
    first = AuditLog(path)
    first.record(attempt())
    first.record(attempt(src_port=40001))
    with open(path, "a") as stream:
        stream.write('{"time": "2026-11-27T12:00')  # a crash mid-line
    again = AuditLog(path)
    assert [a.src_port for a in again.query()] == [40001, 40000]


def test_default_log_path(tmp_path):
    assert default_log_path(tmp_path / "policy.yaml") == tmp_path / "policy.blocked.jsonl"
    assert default_log_path(tmp_path / "policy.yaml", "logs/b.jsonl") == tmp_path / "logs" / "b.jsonl"
    assert default_log_path(tmp_path / "policy.yaml", "/var/log/b.jsonl").as_posix() == "/var/log/b.jsonl"


def test_audit_keys_are_validated():
    base = "campus: {prefixes: [10.0.0.0/8]}\n"
    assert parse_policy(base).audit.sample_rate == 10
    assert parse_policy(base + "audit: {sample_rate: 0, log: x.jsonl}\n").audit.log == "x.jsonl"
    for text, message in [
        ("audit: {sample_rate: -1}", "audit.sample_rate: -1 is not a rate in packets per second (0-100000)"),
        ("audit: {rate: 5}", "audit.rate: unknown key 'rate'"),
        ("audit: {log: ''}", "audit.log: expected non-empty text"),
    ]:
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_policy(base + text + "\n")


def test_inventory_lists_relays_and_exceptions_with_expiry():
    policy = parse_policy(
        """
campus: {prefixes: [10.20.0.0/16]}
gateways: [{name: relay, addresses: [10.20.0.25]}]
exceptions:
  - {address: 10.20.1.5, direction: inbound, reason: dept, contact: pm@dept}
  - {address: 10.20.2.50, direction: outbound, reason: big, expires: 2026-12-10T00:00:00Z}
  - {address: 10.20.2.51, direction: outbound, reason: old, expires: 2026-01-01T00:00:00Z}
"""
    )
    result = inventory(policy, T0, datetime.timedelta(days=30))
    assert result["gateways"] == [{"name": "relay", "addresses": ["10.20.0.25/32"]}]
    by_address = {e["address"]: e for e in result["exceptions"]}
    assert by_address["10.20.1.5/32"]["contact"] == "pm@dept" and not by_address["10.20.1.5/32"]["expiring_soon"]
    assert by_address["10.20.2.50/32"]["expiring_soon"] and by_address["10.20.2.50/32"]["days_left"] == 12.5
    assert not by_address["10.20.2.51/32"]["active"] and not by_address["10.20.2.51/32"]["expiring_soon"]
    assert result["summary"] == {"gateways": 1, "exceptions": 3, "active": 2, "expired": 1, "expiring_soon": 1, "soon_days": 30,
                                 "for_review": 0, "lapsed": 0}
    assert format_time(T0) == "2026-11-27T12:00:00.000Z"


def test_the_retransmission_memory_is_bounded_whatever_the_sources(tmp_path, monkeypatch):
    """A flood of distinct (forged) sources within one retransmission window
    must not grow the controller's memory without bound."""
    from smtp_border import audit
    monkeypatch.setattr(audit, "CONNECTIONS_REMEMBERED", 100)
    log = audit.AuditLog(tmp_path / "blocked.jsonl", memory=50)
    moment = datetime.datetime(2026, 11, 28, tzinfo=datetime.timezone.utc)
    for i in range(1000):
        attempt = audit.attempt_from_sample(Clause.PART1_BLOCK, 1, 1, f"198.51.{i // 250}.{i % 250}", "10.20.3.10",
                                            40000, 25, moment)
        assert log.record(attempt)
    assert len(log._last_seen) == 100 and len(log.recent) == 50
    # The newest are still told apart from their retransmissions.
    assert not log.record(attempt)
