"""The core (smtp_border/border.py): every change goes through one object,
which keeps each tracked switch's desired flows equal to a fresh compile of
the policy in force and returns exactly the diffs that get it there."""
import datetime
import os
import textwrap

import pytest

from smtp_border.border import Border
from smtp_border.compiler import compile_switch
from smtp_border.policy import PolicyError
from smtp_border.state import StateUnavailable
from smtp_border.store import Conflict

POLICY = """
campus: {prefixes: [10.20.0.0/16, "fd00:20::/48"]}
gateways: [{name: relay, addresses: [10.20.0.25]}]
exceptions:
  - {address: 10.20.1.5, direction: inbound, reason: dept}
switches: [{dpid: 1, uplinks: [1]}, {dpid: 2, uplinks: [3]}]
"""
LATER = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture
def border(tmp_path):
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    border = Border(tmp_path / "policy.yaml")
    for dpid in (1, 2, 9):  # two enforcing switches and an inside one
        border.flows(dpid)
    return border


def assert_consistent(border, before, outcome, now=None):
    """Each switch's desired flows equal a fresh compile, and the diff takes
    the old flows there."""
    for dpid in (1, 2, 9):
        fresh = compile_switch(border.policy, dpid, now)
        assert border.flows(dpid) == fresh
        diff = outcome.diffs[dpid]
        assert (before[dpid] - set(diff.delete)) | set(diff.add) == fresh


def snapshot(border):
    return {dpid: set(border.flows(dpid)) for dpid in (1, 2, 9)}


def test_each_change_keeps_every_switch_equal_to_a_fresh_compile(border, tmp_path):
    before = snapshot(border)
    added = border.add({"address": "10.20.3.10", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r"})
    assert_consistent(border, before, added)
    assert len(added.diffs[1]) == 2 and not added.diffs[9]  # its flows, and none on the inside switch

    before = snapshot(border)
    batch = border.batch([{"address": "10.20.3.11", "direction": "inbound", "reason": "r"}], [added.subject.id])
    assert_consistent(border, before, batch)

    before = snapshot(border)
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY).replace("10.20.0.0/16", "10.20.0.0/15"))
    assert_consistent(border, before, border.reload())

    before = snapshot(border)
    border.add({"address": "10.20.3.12", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r", "expires": "2099-01-01T00:00:00Z"})
    before = snapshot(border)
    expired = border.expire(LATER)
    assert [str(e.address) for e in expired.change.removed] == ["10.20.3.12/32"]
    assert_consistent(border, before, expired, LATER)
    assert border.expire(LATER) is None


def test_a_reload_that_changes_only_exceptions_touches_only_their_flows(border, tmp_path, monkeypatch):
    """Without recompiling a switch: the exception index takes the change,
    as for an API change (a reload of 10,000 exceptions is then milliseconds)."""
    from smtp_border import pipeline

    def no_compile(*args, **kwargs):
        raise AssertionError("an exceptions-only reload recompiled a switch")

    before = snapshot(border)
    edited = textwrap.dedent(POLICY).replace(
        "  - {address: 10.20.1.5, direction: inbound, reason: dept}\n",
        "  - {address: 10.20.1.5, direction: both, reason: dept}\n"
        "  - {address: 10.20.1.6, direction: outbound, reason: new}\n"
        "  - {address: 10.20.1.7, direction: outbound, reason: gone, expires: 2020-01-01T00:00:00Z}\n")
    (tmp_path / "policy.yaml").write_text(edited)
    monkeypatch.setattr(pipeline.MultiTable, "compile", no_compile)
    outcome = border.reload()
    monkeypatch.undo()
    assert_consistent(border, before, outcome)
    # 10.20.1.5 now outbound too, 10.20.1.6 outbound; the expired one gets nothing.
    assert len(outcome.diffs[1].add) == 2 and not outcome.diffs[1].delete and not outcome.diffs[9]
    assert not any("10.20.1.7" in str(r.match) for r in border.flows(1))


def test_a_refused_change_changes_nothing(border):
    before = snapshot(border)
    for bad in ({"address": "10.20.1.5", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "in the file"},
                {"address": "192.0.2.1", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "outside"}):
        with pytest.raises((Conflict, PolicyError)):
            border.add(bad)
    assert snapshot(border) == before


def test_a_change_that_cannot_be_saved_changes_nothing(border, monkeypatch):
    before = snapshot(border)
    active = set(border.active_ids)

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StateUnavailable):
        border.add({"address": "10.20.3.10", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r"})
    assert snapshot(border) == before and set(border.active_ids) == active
    assert all(str(e.address) != "10.20.3.10/32" for e in border.policy.exceptions)


def test_a_switch_that_connects_later_is_compiled_as_of_the_index(border):
    border.add({"address": "10.20.3.12", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r", "expires": "2099-01-01T00:00:00Z"})
    border.forget(1)
    assert border.flows(1) == compile_switch(border.policy, 1)
    border.expire(LATER)
    border.forget(2)
    assert border.flows(2) == compile_switch(border.policy, 2, LATER)


# -- profiles and budgets (smtp_border/pipeline.py) ------------------------------


def test_switches_with_other_profiles_get_their_own_exception_flows(border):
    """Switch 2 probed as a one-table switch at table 60 without meters:
    every change keeps each switch equal to a fresh compile in its profile."""
    from smtp_border.pipeline import Capabilities, Profile

    choice = border.probed(2, Capabilities(n_tables=1, max_meters=0))
    assert choice.profile == Profile.named("single_table", meters=False)
    before = snapshot(border)
    added = border.add({"address": "10.20.3.10", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r"})
    assert {r.table for r in added.diffs[2].add} == {0} and {r.table for r in added.diffs[1].add} == {1}
    for dpid in (1, 2, 9):
        fresh = border.profile(dpid).compile(border.policy, dpid)
        assert border.flows(dpid) == fresh
        assert (before[dpid] - set(added.diffs[dpid].delete)) | set(added.diffs[dpid].add) == fresh


def test_a_change_over_a_switchs_budget_is_refused_and_changes_nothing(tmp_path):
    from smtp_border.pipeline import OverBudget

    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY).replace(
        "{dpid: 2, uplinks: [3]}", "{dpid: 2, uplinks: [3], pipeline: single_table, table_size: 20}"))
    border = Border(tmp_path / "policy.yaml")
    for dpid in (1, 2, 9):
        border.flows(dpid)
    needed, available, _ = border.budget(2)
    assert (needed, available) == (19, 20)
    fits = border.add({"address": "10.20.3.10", "direction": "inbound", "reason": "fits"})  # one flow: 20 of 20
    before, exceptions = snapshot(border), border.policy.exceptions
    with pytest.raises(OverBudget) as err:
        border.add({"address": "10.20.3.11", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "one too many"})
    assert (err.value.dpid, err.value.needed, err.value.available, err.value.source) == (2, 21, 20, "policy")
    assert snapshot(border) == before and border.policy.exceptions == exceptions
    assert border.budget(2)[0] == 20
    # The index was restored: a removal and an addition that fit go through exactly.
    border.batch([{"address": "10.20.3.11", "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "swap"}], [fits.subject.id])
    assert border.flows(2) == border.profile(2).compile(border.policy, 2) and border.budget(2)[0] == 20
    # A reload that grows the switch past its budget is refused too.
    (tmp_path / "policy.yaml").write_text((tmp_path / "policy.yaml").read_text().replace(
        "10.20.0.0/16,", "10.20.0.0/16, 10.30.0.0/16,"))
    before = snapshot(border)
    with pytest.raises(OverBudget):
        border.reload()
    assert snapshot(border) == before and "10.30.0.0/16" not in str(border.policy.campus)


def test_switches_alike_are_compiled_once_and_each_keeps_its_own_flows(tmp_path, monkeypatch):
    """A hundred edge switches with the same uplinks and profile: one compile,
    as many flow sets; a change recompiles nothing, a switch that connects
    after it compiles (once) under the new policy."""
    from smtp_border import pipeline

    text = textwrap.dedent(POLICY).replace("switches: [{dpid: 1, uplinks: [1]}, {dpid: 2, uplinks: [3]}]",
                                           "switches: [" + ", ".join(f"{{dpid: {d}, uplinks: [1], name: e{d}}}"
                                                                     for d in range(1, 6)) + "]")
    (tmp_path / "policy.yaml").write_text(text)
    border = Border(tmp_path / "policy.yaml")
    real, calls = pipeline.MultiTable.compile, []
    monkeypatch.setattr(pipeline.MultiTable, "compile", lambda self, *a, **k: calls.append(a[1]) or real(self, *a, **k))
    for dpid in (1, 2, 3, 4):
        border.flows(dpid)
    assert len(calls) == 1 and border.flows(1) == border.flows(4) and border.flows(1) is not border.flows(4)
    border.add({"address": "10.20.3.10", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r"})
    assert len(calls) == 1
    assert border.flows(5) == real(border.profile(5), border.policy, 5) == border.flows(1)
    assert len(calls) == 2


def test_a_switchs_target_is_one_answer_of_the_core(tmp_path):
    """Border.target: profile, flows, budget verdict and role at once, equal
    to the separate answers; a switch whose table is too small for a reload
    the file forced (a replica's sync is never refused) says so in its target."""
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY).replace(
        "{dpid: 2, uplinks: [3]}", "{dpid: 2, uplinks: [3], pipeline: single_table, table_size: 19}"))
    border = Border(tmp_path / "policy.yaml")
    for dpid in (1, 2, 9):
        target = border.target(dpid)
        assert target.flows is border.flows(dpid) and target.choice == border.choice(dpid)
        assert target.profile == border.profile(dpid) and target.over is None
        assert target.enforcing == (dpid in (1, 2)) and target.listing == border.listing(dpid)
        assert target.listing.role == ("enforcing" if dpid in (1, 2) else "inside")
        # Delivery order is the target's: from nothing, every flow is added, none deleted.
        _, phases = target.plan([])
        assert len([r for phase in phases for _, r in phase]) == len(target.flows)
        assert all(op == "add" for phase in phases for op, _ in phase)
    assert border.target(2).profile.name == "single_table" and border.target(1).profile.name == "multi_table"
    assert border.listing(9).name is None and border.listing(9).uplinks == () and border.listing(1).uplinks == (1,)
    # As Border.sync applies another replica's change: not refused for a budget.
    added = {"address": "10.20.3.10", "direction": "inbound", "reason": "from a replica"}
    outcome = border._apply(border.store.propose_add(added), budget=False)
    assert outcome.change.added and border.target(2).over is not None and border.target(2).over.needed == 20
    assert border.target(1).over is None
