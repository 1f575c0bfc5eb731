"""API exceptions in a real three-member etcd cluster (smtp_border/etcdstate.py),
shared by two replicas (two Borders): a change on one reaches the other
through the watch, a concurrent change is refused whole, never lost, and
the loss of a member is invisible while the loss of quorum refuses changes
until it comes back."""
import itertools
import textwrap
import threading
import time

import pytest

from smtp_border.border import Border
from smtp_border.etcdstate import ConcurrentChange, EtcdState, StateInDoubt
from smtp_border.state import StateUnavailable

from etcdcluster import EtcdCluster

POLICY = """
campus: {prefixes: [10.20.0.0/16]}
switches: [{dpid: 1, uplinks: [1]}]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as running:
        yield running


_prefixes = itertools.count()


@pytest.fixture
def replicas(cluster, tmp_path):
    """Two Borders on one etcd prefix (fresh per test), each tracking switch 1."""
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    prefix = f"/smtp-border-test-{next(_prefixes)}/exceptions/"
    made = []
    for _ in range(2):
        border = Border(tmp_path / "policy.yaml", state=EtcdState(cluster.endpoints, prefix=prefix, timeout=2))
        border.flows(1)
        made.append(border)
    return made


class Watching:
    """A replica's watch, read in the test's own time: events(n) waits (at
    most `timeout`) for n events and hands them to Border.sync, as the app's
    watch loop does."""

    def __init__(self, border):
        self.border = border
        self.iterator, self.cancel = border.store._state.watch()

    def sync(self, expected, timeout=5.0):
        if expected == 0:
            return None
        timer = threading.Timer(timeout, self.cancel)
        timer.start()
        seen = []
        try:
            for event in self.iterator:
                seen.append(event)
                if len(seen) >= expected:
                    break
        finally:
            timer.cancel()
        assert len(seen) == expected, f"{len(seen)} of {expected} events within {timeout} s"
        return self.border.sync(seen)


def catch_up(border, expected):
    watching = Watching(border)
    try:
        return watching.sync(expected)
    finally:
        watching.cancel()


def addresses(border):
    return sorted(str(e.address) for e in border.store.api_exceptions)


def test_a_change_on_one_replica_reaches_the_other_and_its_switches(replicas):
    a, b = replicas
    own = Watching(a)
    try:
        added = a.add({"address": "10.20.3.10", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r"})
        assert added.diffs[1].add
        outcome = catch_up(b, 1)
        assert addresses(b) == ["10.20.3.10/32"] and b.flows(1) == a.flows(1)
        assert outcome.diffs[1] == added.diffs[1]  # the same flows reach b's switches
        # a's own change coming back through a's watch changes nothing.
        assert not own.sync(1).diffs[1]
    finally:
        own.cancel()
    a.remove(added.subject.id)
    catch_up(b, 1)
    assert addresses(b) == [] and b.flows(1) == a.flows(1)


def test_two_replicas_adding_the_same_address_at_once_one_wins_none_lost(replicas):
    a, b = replicas
    a.add({"address": "10.20.3.10", "direction": "inbound", "reason": "first"})
    before = set(b.flows(1))
    with pytest.raises(ConcurrentChange, match="another controller changed 10.20.3.10/32"):
        b.add({"address": "10.20.3.10", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "second"})
    assert b.flows(1) == before and addresses(b) == []  # nothing changed on b
    catch_up(b, 1)
    kept = b.store.exception(a.store.api_exceptions[0].id)
    assert (kept.direction.value, kept.reason) == ("inbound", "first")
    # Removing what the other replica changed since: refused as well.
    a.batch([{"address": "10.20.3.10", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "edited"}], [kept.id])
    with pytest.raises(ConcurrentChange):
        b.remove(kept.id)
    catch_up(b, 1)  # the edit: one put that replaces the key
    assert b.store.exception(kept.id).reason == "edited"


def test_a_new_replica_starts_from_what_etcd_holds_in_order(replicas, cluster, tmp_path):
    a, _ = replicas
    for host in (12, 11, 13):
        a.add({"address": f"10.20.3.{host}", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r"})
    state = a.store._state
    fresh = Border(tmp_path / "policy.yaml", state=EtcdState(cluster.endpoints, prefix=state.prefix))
    assert [str(e.address) for e in fresh.store.api_exceptions] == ["10.20.3.12/32", "10.20.3.11/32", "10.20.3.13/32"]
    assert fresh.flows(1) == a.flows(1)


def test_losing_one_member_is_invisible_losing_quorum_refuses_changes_until_it_returns(replicas, cluster):
    a, b = replicas
    first = cluster.names[0]  # the endpoint each replica tries first
    watching = Watching(a)
    cluster.kill(first)
    try:
        a.add({"address": "10.20.3.20", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "one member down"})
        second = cluster.names[1]
        cluster.kill(second)
        try:
            before = set(a.flows(1))
            started = time.monotonic()
            with pytest.raises(StateInDoubt, match="may still take effect"):
                a.add({"address": "10.20.3.21", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "no quorum"})
            print(f"refused without quorum after {time.monotonic() - started:.1f} s")
            assert a.flows(1) == before and "10.20.3.21/32" not in addresses(a)
        finally:
            cluster.start(second)
    finally:
        cluster.start(first)
        watching.cancel()
    cluster.wait_healthy()
    # With quorum back, etcd may commit a proposal it kept, or not: either
    # way both replicas end where etcd is, through their watches.
    truth = addresses(Border(a.store.policy_file, state=EtcdState(cluster.endpoints, prefix=a.store._state.prefix)))
    landed = int("10.20.3.21/32" in truth)
    print(f"the change in doubt {'landed' if landed else 'did not land'} when quorum returned")
    catch_up(a, landed)
    catch_up(b, 1 + landed)
    assert addresses(a) == addresses(b) == truth and a.flows(1) == b.flows(1)
    assert "10.20.3.20/32" in truth
    a.add({"address": "10.20.3.22", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "quorum back"})
    catch_up(b, 1)
    assert addresses(b) == truth + ["10.20.3.22/32"]


def test_etcd_unreachable_is_unavailable_and_nothing_changes(tmp_path):
    from etcdcluster import free_port

    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    with pytest.raises(StateUnavailable, match="no etcd member answered"):
        Border(tmp_path / "policy.yaml", state=EtcdState(f"http://127.0.0.1:{free_port()}", timeout=1))


def test_a_journal_moves_into_an_empty_etcd_once(cluster, tmp_path, capsys):
    from smtp_border import cli
    from smtp_border.etcdstate import PREFIX

    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    local = Border(tmp_path / "policy.yaml")  # the journal beside policy.yaml
    for host in (31, 30):
        local.add({"address": f"10.20.3.{host}", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "from the journal"})
    journal = local.store.state_file
    assert cli.main(["journal-to-etcd", journal, "--etcd", cluster.endpoints]) == 0
    assert "2 exception(s) copied" in capsys.readouterr().out
    shared = Border(tmp_path / "policy.yaml", state=EtcdState(cluster.endpoints, prefix=PREFIX))
    assert addresses(shared) == addresses(local) == ["10.20.3.30/32", "10.20.3.31/32"]
    assert shared.flows(1) == local.flows(1)
    # Again: etcd is no longer empty, nothing is copied over what it holds.
    assert cli.main(["journal-to-etcd", journal, "--etcd", cluster.endpoints]) == 1
    assert "holds 2 exception(s) already; nothing copied" in capsys.readouterr().err
