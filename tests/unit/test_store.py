"""Incremental diffs, the policy store (file + API exceptions) and its
crash-safe persistence."""
import collections
import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import netaddr
import pytest

from smtp_border import state
from smtp_border.compiler import compile_switch
from smtp_border.diff import diff_rules
from smtp_border.policy import PolicyError, parse_policy
from smtp_border.store import Conflict, NotFound, PolicyStore

POLICY = """
campus: {prefixes: [10.20.0.0/16, "fd00:20::/48"]}
gateways: [{name: relay, addresses: [10.20.0.25]}]
exceptions:
  - {address: 10.20.1.5, direction: inbound, reason: dept}
switches: [{dpid: 1, uplinks: [1]}]
"""


@pytest.fixture
def store(tmp_path):
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    return PolicyStore(tmp_path / "policy.yaml")


def add(store, address, direction="outbound", **extra):
    if direction != "inbound":
        extra = {"grounds": "message-size", "needs_message_size": "200MB", **extra}
    change = store.propose_add({"address": address, "direction": direction, "reason": "test", **extra})
    store.commit(change)
    return change.added[0]


# -- diff ---------------------------------------------------------------------

def many_exceptions(n):
    # Every other address, so that no two exceptions merge into one network.
    lines = "".join(f"  - {{address: 10.20.{i // 250}.{i % 250 + 1}, direction: outbound, reason: r}}\n" for i in range(0, 2 * n, 2))
    return parse_policy("campus: {prefixes: [10.20.0.0/16]}\nexceptions:\n" + lines)


def test_diff_of_identical_rule_sets_is_empty():
    rules = compile_switch(many_exceptions(50), 1)
    assert not diff_rules(rules, rules)
    assert len(diff_rules(rules, rules)) == 0


def test_one_exception_more_is_one_flow_whatever_the_policy_size():
    for size in (10, 1000):
        policy = many_exceptions(size)
        before = compile_switch(policy, 1)
        extra = parse_policy(
            "campus: {prefixes: [10.20.0.0/16]}\nexceptions:\n  - {address: 10.20.200.200, direction: both, reason: r}\n"
        ).exceptions
        after = compile_switch(type(policy)(**{**vars(policy), "exceptions": policy.exceptions + extra}), 1)
        diff = diff_rules(before, after)
        assert len(diff.add) == 2 and diff.delete == ()  # inbound and outbound flow
        assert {r.match.ip_src or r.match.ip_dst for r in diff.add} == {netaddr.IPNetwork("10.20.200.200/32")}
        back = diff_rules(after, before)
        assert back.add == () and set(back.delete) == set(diff.add)


def test_changed_instructions_are_re_added_not_deleted():
    old = compile_switch(many_exceptions(3), 1)
    changed = {r for r in old}
    victim = next(r for r in old if r.instructions.goto_table == 2 and r.priority == 200)
    replacement = type(victim)(victim.table, victim.priority, victim.match, type(victim.instructions)(), victim.cookie)
    changed = (changed - {victim}) | {replacement}
    diff = diff_rules(old, frozenset(changed))
    assert diff.add == (replacement,) and diff.delete == ()


# -- store --------------------------------------------------------------------

def test_add_and_remove_api_exception(store):
    exception = add(store, "10.20.3.10")
    assert exception.source == "api"
    assert store.exception(exception.id) == exception
    assert [e.address for e in store.policy.exceptions][-1] == netaddr.IPNetwork("10.20.3.10/32")
    change = store.propose_remove(exception.id)
    assert change.removed == (exception,)
    store.commit(change)
    with pytest.raises(NotFound):
        store.exception(exception.id)


def test_rejections_leave_the_store_unchanged(store):
    add(store, "10.20.3.10")
    before = (store.policy, state.read_state(store.state_file))
    with pytest.raises(Conflict, match=r"an exception for 10.20.3.10/32 already exists"):
        store.propose_add({"address": "10.20.3.10", "direction": "inbound", "reason": "again"})
    with pytest.raises(Conflict, match=r"an exception for 10.20.1.5/32 already exists"):
        store.propose_add({"address": "10.20.1.5", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "file has it"})
    with pytest.raises(PolicyError) as caught:
        store.propose_add({"address": "10.20.3.11", "direction": "sideways", "reason": "x"})
    assert (caught.value.path, caught.value.source) == ("direction", "request")
    with pytest.raises(PolicyError, match="is not inside the campus prefixes"):
        store.propose_add({"address": "192.0.2.1", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "x"})
    with pytest.raises(PolicyError, match=r"^request: expires: 2020-01-01T00:00:00\+00:00 is in the past$"):
        store.propose_add({"address": "10.20.3.12", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "x", "expires": "2020-01-01T00:00:00Z"})
    with pytest.raises(PolicyError, match="unknown key 'id'"):
        store.propose_add({"address": "10.20.3.12", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "x", "id": "abc"})
    file_exception = store.policy.exceptions[0]
    with pytest.raises(Conflict, match="comes from .*policy.yaml; remove it there and reload"):
        store.propose_remove(file_exception.id)
    with pytest.raises(NotFound):
        store.propose_remove("nope")
    assert (store.policy, state.read_state(store.state_file)) == before


def test_a_batch_removes_and_adds_as_one_change(store):
    old = [add(store, f"10.20.3.{i}") for i in range(1, 4)]
    lines = Path(store.state_file).read_text().count("\n")
    change = store.propose_batch(
        [{"address": "10.20.3.1", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "changed"},  # removed below, so it may come back
         {"address": "10.20.6.0/24", "direction": "inbound", "reason": "new lab"}],
        [old[0].id, old[1].id],
    )
    assert change.removed == (old[0], old[1])
    assert [(str(e.address), e.direction.value) for e in change.added] == [("10.20.3.1/32", "both"), ("10.20.6.0/24", "inbound")]
    store.commit(change)
    assert [str(e.address) for e in store.api_exceptions] == ["10.20.3.3/32", "10.20.3.1/32", "10.20.6.0/24"]
    assert Path(store.state_file).read_text().count("\n") == lines + 1  # saved as one line
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == store.api_exceptions


def test_a_bad_batch_changes_nothing_and_names_the_item(store):
    kept = add(store, "10.20.3.1")
    before = (store.policy, state.read_state(store.state_file))
    good = {"address": "10.20.7.1", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "ok"}
    with pytest.raises(PolicyError) as caught:
        store.propose_batch([good, {"address": "10.20.7.2", "direction": "sideways", "reason": "x"}], [])
    assert (caught.value.source, caught.value.path) == ("request", "add[1].direction")
    with pytest.raises(PolicyError, match=r"add\[1\]\.address: 10.20.7.1/32 is added twice"):
        store.propose_batch([good, good], [])
    with pytest.raises(Conflict, match=r"^add\[1\]: an exception for 10.20.3.1/32 already exists"):
        store.propose_batch([good, {"address": "10.20.3.1", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "x"}], [])
    with pytest.raises(PolicyError, match=r"add\[0\]\.expires: 2020-01-01T00:00:00\+00:00 is in the past"):
        store.propose_batch([dict(good, expires="2020-01-01T00:00:00Z")], [])
    with pytest.raises(NotFound, match=r"^remove\[1\]: no exception with id 'nope'"):
        store.propose_batch([good], [kept.id, "nope"])
    with pytest.raises(PolicyError, match=r"remove\[1\]: .* is removed twice"):
        store.propose_batch([], [kept.id, kept.id])
    with pytest.raises(PolicyError, match=r"remove\[0\]: expected an exception id \(a string\), got 7"):
        store.propose_batch([], [7])
    with pytest.raises(Conflict, match=r"^remove\[0\]: exception .* comes from .*policy.yaml"):
        store.propose_batch([], [store.policy.exceptions[0].id])
    assert (store.policy, state.read_state(store.state_file)) == before


def test_api_exceptions_survive_a_restart(store, tmp_path):
    expires = "2031-01-01T00:00:00Z"
    first = add(store, "10.20.3.10", contact="ops@example.edu", expires=expires)
    second = add(store, "fd00:20::99", direction="both")
    again = PolicyStore(tmp_path / "policy.yaml")
    assert again.api_exceptions == (first, second)
    assert again.policy == store.policy
    assert again.exception(first.id).expires == datetime.datetime(2031, 1, 1, tzinfo=datetime.timezone.utc)
    # The operator's file is untouched: the state lives beside it.
    assert (tmp_path / "policy.yaml").read_text() == textwrap.dedent(POLICY)
    assert store.state_file == str(tmp_path / "policy.api-exceptions.json")


def test_reload_applies_the_file_and_keeps_api_exceptions(store, tmp_path):
    api = add(store, "10.20.3.10")
    edited = textwrap.dedent(POLICY).replace(
        "  - {address: 10.20.1.5, direction: inbound, reason: dept}\n",
        "  - {address: 10.20.1.6, direction: both, reason: new dept}\n",
    )
    (tmp_path / "policy.yaml").write_text(edited)
    change = store.propose_reload()
    assert [str(e.address) for e in change.added] == ["10.20.1.6/32"]
    assert [str(e.address) for e in change.removed] == ["10.20.1.5/32"]
    store.commit(change)
    assert [str(e.address) for e in store.policy.exceptions] == ["10.20.1.6/32", "10.20.3.10/32"]
    assert store.exception(api.id).source == "api"


def test_invalid_reload_keeps_the_policy_in_force(store, tmp_path):
    before = store.policy
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY).replace("10.20.1.5", "10.20.1.300"))
    with pytest.raises(PolicyError) as caught:
        store.propose_reload()
    assert str(caught.value) == f"{tmp_path / 'policy.yaml'}: exceptions[0].address: '10.20.1.300' is not an IP address or network"
    assert store.policy == before


def test_a_reload_quarantines_what_the_new_file_contradicts_and_a_restart_agrees(store, tmp_path):
    """Moving an API exception into the file, or shrinking the campus under
    one, is accepted: the API copy is quarantined (kept, not enforced,
    reported), exactly as a restart with the same files would do; a later
    file that allows it again enforces it again."""
    moved = add(store, "10.20.3.10")
    outside = add(store, "fd00:20::99", direction="both")
    kept = add(store, "10.20.3.11")
    edited = textwrap.dedent(POLICY).replace(
        '"fd00:20::/48"', '"fd00:30::/48"'
    ).replace("switches:", "  - {address: 10.20.3.10, direction: inbound, reason: now in the file}\nswitches:")
    (tmp_path / "policy.yaml").write_text(edited)
    change = store.propose_reload()
    assert [(q.exception, q.reason) for q in change.quarantined] == [
        (moved, f"10.20.3.10/32 is also in {tmp_path / 'policy.yaml'} (exceptions[1]), whose entry is in force"),
        (outside, f"fd00:20::99/128 is not inside the campus prefixes of {tmp_path / 'policy.yaml'}"),
    ]
    store.commit(change)
    in_force = {(str(e.address), e.source) for e in store.policy.exceptions}
    assert in_force == {("10.20.1.5/32", "file"), ("10.20.3.10/32", "file"), ("10.20.3.11/32", "api")}
    again = PolicyStore(store.policy_file, store.state_file)
    assert again.policy == store.policy
    assert [q.to_dict() for q in again.quarantined] == [q.to_dict() for q in store.quarantined]
    assert again.api_exceptions == (kept,)

    # A quarantined exception is removed by its id, like any API exception.
    assert store.quarantined[1].to_dict()["id"] == outside.id
    store.commit(store.propose_remove(outside.id))
    assert [q.exception for q in PolicyStore(store.policy_file, store.state_file).quarantined] == [moved]

    # The original file allows it again: enforced again, from the API.
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    change = store.propose_reload()
    assert change.quarantined == () and moved in change.added
    store.commit(change)
    assert set(store.api_exceptions) == {kept, moved}
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == store.api_exceptions


def test_a_state_file_the_policy_contradicts_starts_with_it_quarantined(tmp_path):
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    path = tmp_path / "policy.api-exceptions.json"
    path.write_text("{not json")
    with pytest.raises(PolicyError, match=r"policy.api-exceptions.json: line 1, column 2: not valid JSON"):
        PolicyStore(tmp_path / "policy.yaml")
    items = [{"address": "10.99.0.1", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "x"},
             {"address": "10.20.1.5", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "also in the file"},
             {"address": "10.20.9.9", "direction": "sideways", "reason": "x"},
             {"address": "10.20.9.10", "direction": "inbound", "reason": "fine"}]
    path.write_text(json.dumps({"format": state.FORMAT, "version": 1, "exceptions": items}))
    store = PolicyStore(tmp_path / "policy.yaml")
    assert [str(e.address) for e in store.api_exceptions] == ["10.20.9.10/32"]
    reasons = [q.reason for q in store.quarantined]
    assert reasons[0].startswith("10.99.0.1/32 is not inside the campus prefixes")
    assert reasons[1].startswith("10.20.1.5/32 is also in")
    assert reasons[2].startswith("invalid: exceptions[2].direction: 'sideways' is not a direction")
    # Even the one that does not parse can be removed.
    store.commit(store.propose_remove(store.quarantined[2].id))
    assert [q.address for q in PolicyStore(tmp_path / "policy.yaml").quarantined] == ["10.99.0.1/32", "10.20.1.5/32"]


def test_adding_the_same_exception_again_is_no_change(store):
    """A client that retries a POST after a failed answer gets the exception
    in force, not a conflict."""
    first = add(store, "10.20.3.10", contact="a@example.edu")
    lines = Path(store.state_file).read_text()
    change = store.propose_add({"address": "10.20.3.10", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "test", "contact": "a@example.edu"})
    assert change.subject == first and change.added == () and not change.save_added
    store.commit(change)
    assert Path(store.state_file).read_text() == lines
    with pytest.raises(Conflict):
        store.propose_add({"address": "10.20.3.10", "direction": "inbound", "reason": "test"})


# -- crash safety -------------------------------------------------------------

def test_failed_rewrite_leaves_the_old_state_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    state.StateFile(path).rewrite([{"address": "10.20.3.10/32"}])

    def crash(*args):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        state.StateFile(path).rewrite([{"address": "10.20.3.11/32"}])
    assert state.read_state(path) == [{"address": "10.20.3.10/32"}]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_change_is_one_appended_line(store):
    for i in range(1, 21):
        add(store, f"10.20.3.{i}")
    path = Path(store.state_file)
    inode = path.stat().st_ino
    lines = path.read_text().count("\n")
    exception = add(store, "10.20.3.100")
    store.commit(store.propose_remove(exception.id))
    # Appended in place, not rewritten: same file, two more lines.
    assert path.stat().st_ino == inode
    assert path.read_text().count("\n") == lines + 2
    assert [e["address"] for e in state.read_state(path)] == [f"10.20.3.{i}/32" for i in range(1, 21)]


def test_the_journal_is_compacted_and_replays_the_same(store, monkeypatch):
    monkeypatch.setattr(state, "COMPACT_SLACK", 10)
    kept = [add(store, f"10.20.4.{i}") for i in range(1, 6)]
    path = Path(store.state_file)
    longest = 0
    for round in range(40):
        exception = add(store, f"10.20.5.{round + 1}", direction="both")
        store.commit(store.propose_remove(exception.id))
        longest = max(longest, path.read_text().count("\n"))
    # Never more than the slack plus twice the exceptions (at most one more
    # than kept at any time) and the header.
    assert longest <= 2 * (len(kept) + 1) + 10 + 1
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == tuple(kept)


def test_a_version_1_file_is_read_and_rewritten_as_a_journal(tmp_path):
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    path = tmp_path / "policy.api-exceptions.json"
    items = [{"address": "10.20.3.10", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "old"}, {"address": "10.20.3.11", "direction": "inbound", "reason": "old"}]
    path.write_text(json.dumps({"format": state.FORMAT, "version": 1, "exceptions": items}, indent=2))
    store = PolicyStore(tmp_path / "policy.yaml")
    assert [str(e.address) for e in store.api_exceptions] == ["10.20.3.10/32", "10.20.3.11/32"]
    store.commit(store.propose_remove(store.api_exceptions[0].id))
    assert json.loads(path.read_text().splitlines()[0]) == {"format": state.FORMAT, "version": state.VERSION}
    again = PolicyStore(tmp_path / "policy.yaml")
    assert again.api_exceptions == store.api_exceptions and len(again.api_exceptions) == 1


def test_a_torn_last_line_is_ignored_and_then_replaced(store):
    first = add(store, "10.20.3.10")
    path = Path(store.state_file)
    with open(path, "ab") as stream:
        stream.write(b'{"add":[{"address":"10.20.3.11/32","direction":"bo')  # the crash came mid-write
    again = PolicyStore(store.policy_file, store.state_file)
    assert again.api_exceptions == (first,)
    second = add(again, "10.20.3.12")
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == (first, second)


REAL_FSYNC = os.fsync


def fsync_failing(at, errno=5, text="Input/output error"):
    """os.fsync that fails at the calls numbered in `at` (1-based), and works otherwise."""
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) in at:
            raise OSError(errno, text)
        REAL_FSYNC(fd)

    return fsync


def test_a_change_whose_fsync_fails_never_comes_back(store, monkeypatch):
    """The line of a change that could not be fsync'ed may already be in the
    page cache and reach the disk later: it is cut off, durably, before the
    client is told the change failed, so a restart cannot resurrect it."""
    first = add(store, "10.20.3.10")
    path = Path(store.state_file)
    on_disk = path.read_bytes()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", fsync_failing(at={1}))
    with pytest.raises(state.StateUnavailable, match="cannot save the change in .*: Input/output error"):
        add(store, "10.20.3.11")
    assert store.api_exceptions == (first,)
    assert path.read_bytes() == on_disk
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == (first,)
    second = add(store, "10.20.3.12")  # and the journal goes on as before
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == (first, second)


def test_when_the_line_cannot_be_cut_off_the_file_is_rewritten_as_it_was(store, monkeypatch):
    first = add(store, "10.20.3.10")
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    def no_truncate(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_full)
    monkeypatch.setattr(state, "_cut", no_truncate)
    # Neither cut off nor rewritten (fsync fails for the temporary file too):
    # the error says the file is in doubt.
    with pytest.raises(state.StateUnavailable, match="nor restore it .* the file may hold the refused change"):
        add(store, "10.20.3.11")
    assert store.api_exceptions == (first,)
    # Only the append's fsync fails: the rewrite puts the old state back.
    monkeypatch.setattr(os, "fsync", fsync_failing(at={1}, errno=28, text="No space left on device"))
    store._state.load()  # a journal again
    with pytest.raises(state.StateUnavailable, match="No space left on device"):
        add(store, "10.20.3.11")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == (first,)


def test_a_compaction_that_fails_changes_nothing(store, monkeypatch):
    first = add(store, "10.20.3.10")
    store._state.rewrite_on_next_record()
    real_fsync = os.fsync
    # The temporary file synced and renamed over the journal; the directory's fsync fails.
    monkeypatch.setattr(os, "fsync", fsync_failing(at={2}))
    with pytest.raises(state.StateUnavailable):
        add(store, "10.20.3.11")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store.api_exceptions == (first,)
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == (first,)


def test_a_corrupt_journal_line_is_a_clear_start_up_error(store):
    add(store, "10.20.3.10")
    path = Path(store.state_file)
    path.write_text(path.read_text() + "{oops\n" + path.read_text().splitlines()[1] + "\n")
    with pytest.raises(PolicyError, match=r"api-exceptions.json: line 3, column 2: not valid JSON"):
        PolicyStore(store.policy_file, store.state_file)
    path.write_text(path.read_text().splitlines()[0] + '\n{"add": 5, "remove": []}\n')
    with pytest.raises(PolicyError, match=r'line 2: expected \{"remove": \[...\], "add": \[...\]\}'):
        PolicyStore(store.policy_file, store.state_file)
    path.write_text(json.dumps({"format": state.FORMAT, "version": 7}) + "\n")
    with pytest.raises(PolicyError, match=r"version: unsupported version 7"):
        PolicyStore(store.policy_file, store.state_file)


WRITER = """
import sys
from smtp_border import state
state.COMPACT_SLACK = 5  # compact often, so that kills land in rewrites too
journal = state.StateFile(sys.argv[1])
live = {item["address"]: item for item in journal.load()}
batch = int(sys.argv[2])
print("ready", flush=True)
while True:
    # Each change removes the oldest batch of ten (if there are three) and adds one.
    before = list(live.values())
    removed = list(live)[:10] if len(live) >= 30 else []
    for address in removed:
        del live[address]
    added = [{"address": f"10.{batch // 256 % 256}.{batch % 256}.{i}/32", "reason": "x" * 100} for i in range(10)]
    live.update((item["address"], item) for item in added)
    journal.record(removed, added, lambda: list(live.values()), lambda: before)
    batch += 1
"""


def test_killed_writer_leaves_whole_changes(tmp_path):
    """SIGKILL a process that saves changes as fast as it can, again and
    again on the same file: every time, the file holds whole changes only
    (batches of ten), and the next writer carries on from there."""
    path = tmp_path / "state.json"
    seen = []
    for attempt in range(10):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(attempt * 100000)], stdout=subprocess.PIPE)
        assert writer.stdout.readline().strip() == b"ready"
        subprocess.run(["sleep", f"0.{attempt + 1}"])
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        items = state.read_state(path)
        batches = collections.Counter(item["address"].rsplit(".", 1)[0] for item in items)
        assert set(batches.values()) <= {10}, batches
        seen.append(len(items))
    assert all(n % 10 == 0 and 0 < n <= 30 for n in seen), seen


def test_a_reload_keeps_the_order_a_restart_reads(store):
    """Remove an exception and add it again: it moves to the end of the
    journal, and a reload puts the API exceptions in that same order."""
    first, second = add(store, "10.20.3.10"), add(store, "10.20.3.11")
    store.commit(store.propose_remove(first.id))
    again = add(store, "10.20.3.10")
    store.commit(store.propose_reload())
    assert store.api_exceptions == (second, again)
    assert PolicyStore(store.policy_file, store.state_file).api_exceptions == store.api_exceptions


def test_a_quarantined_address_takes_no_new_grant_so_none_is_lost_at_a_restart(tmp_path):
    """Issue 24's lost grant: the journal holds an API entry for 10.20.3.10
    quarantined as invalid; an add of 10.20.3.10 answered 2xx with the same
    id, DELETE of that id removed the quarantined entry, and the journal's
    removal took the active grant with it at the next restart. Now the add
    is refused (409) naming the quarantined id; once that is removed, the
    add goes through and survives a restart, and so does everything else."""
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    path = tmp_path / "policy.api-exceptions.json"
    path.write_text("\n".join([json.dumps({"format": state.FORMAT, "version": state.VERSION}), json.dumps(
        {"remove": [], "add": [{"address": "10.20.3.10/32", "direction": "sideways", "reason": "old"},
                               {"address": "10.20.3.11/32", "direction": "inbound", "reason": "kept"}]})]) + "\n")
    store = PolicyStore(tmp_path / "policy.yaml")
    (bad,) = store.quarantined
    grant = {"address": "10.20.3.10", "direction": "inbound", "reason": "new server"}
    with pytest.raises(Conflict, match=rf"quarantined \(id {bad.id}: invalid.*exceptions rm {bad.id}") as refused:
        store.propose_add(grant)
    assert refused.value.existing is bad
    with pytest.raises(Conflict, match=r"add\[0\]: the saved exception for 10.20.3.10/32 is quarantined"):
        store.propose_batch([grant], [])
    assert [str(e.address) for e in PolicyStore(tmp_path / "policy.yaml").api_exceptions] == ["10.20.3.11/32"]
    store.commit(store.propose_remove(bad.id))
    store.commit(store.propose_add(grant))
    restarted = PolicyStore(tmp_path / "policy.yaml")
    assert restarted.quarantined == ()
    assert {(str(e.address), e.reason) for e in restarted.api_exceptions} == {
        ("10.20.3.10/32", "new server"), ("10.20.3.11/32", "kept")}


def test_a_journal_corrupted_in_the_middle_is_checked_and_repaired_keeping_every_valid_line(tmp_path):
    """Issue 24: a corrupted line in the middle of the journal stops the
    controller (failing closed is right) with a message naming the commands;
    `state check` lists the problem, `state repair` keeps every valid line,
    sets the bad one aside, keeps the old file as a backup, and the store
    then starts with what the valid lines hold."""
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    store = PolicyStore(tmp_path / "policy.yaml")
    for address in ("10.20.3.10", "10.20.3.11", "10.20.3.12"):
        add(store, address, "inbound")
    journal = Path(store.state_file)
    lines = journal.read_text().splitlines()
    assert len(lines) == 4
    lines[2] = lines[2][:20] + "#garbage"  # the second change, cut and mangled
    journal.write_text("\n".join(lines) + "\n")
    with pytest.raises(PolicyError, match=r"line 3.*smtp-border state check .*smtp-border state repair"):
        PolicyStore(tmp_path / "policy.yaml")
    ((number, problem),) = state.check(journal)
    assert number == 3 and problem.startswith("not valid JSON")
    before = journal.read_bytes()
    backup, side, kept, dropped = state.repair(journal, now="T1")
    assert (kept, dropped) == (2, 1) and backup.read_bytes() == before
    assert "# line 3:" in side.read_text() and "#garbage" in side.read_text()
    assert state.check(journal) == []
    assert sorted(str(e.address) for e in PolicyStore(tmp_path / "policy.yaml").api_exceptions) == [
        "10.20.3.10/32", "10.20.3.12/32"]
    with pytest.raises(FileExistsError):  # never over an earlier backup
        state.repair(journal, now="T1")


def test_a_journal_line_whose_removal_is_not_an_address_is_refused_naming_it(tmp_path):
    """Once a TypeError at start-up (an unhashable removal); now the one-line
    error every other bad line gets, and `state check` agrees with the load."""
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    journal = tmp_path / "policy.api-exceptions.json"
    journal.write_text(json.dumps({"format": state.FORMAT, "version": state.VERSION}) + '\n{"remove": [["x"]], "add": []}\n')
    with pytest.raises(PolicyError, match=r"line 2: a removal that is not an address"):
        PolicyStore(tmp_path / "policy.yaml")
    assert state.check(journal) == [(2, "a removal that is not an address")]
    journal.write_text(json.dumps({"format": state.FORMAT, "version": state.VERSION}) + '\n{"remove": ["10.20.1.9/32"], "add": []}\n')
    assert PolicyStore(tmp_path / "policy.yaml").api_exceptions == () and state.check(journal) == []  # its twin
