"""One switch, one agent (ryu_apps/agent.py): nothing one switch does holds
another switch, a change, or the controller's memory. The real app against
fake switches (tests/fakeswitch.py) that misbehave as hostile or broken
peers do: silent, REPLY_MORE forever, floods of errors, echoes and
packet-ins, nonsense table features. Every "pending" or "closed" has its
healthy twin on the same app; no assertion is about time (the benchmark,
mininet/bench.py, measures it)."""
import logging

import netaddr
import pytest

from appkit import H1_OUT, connect, desired, make_app_fixture, settle
from fakeswitch import OFP, FakeSwitch
from ryu_apps.channel import Limits
from smtp_border.rules import Clause, make_cookie

make_app = pytest.fixture(make_app_fixture)

TWO = """
    campus: {prefixes: [10.20.0.0/16]}
    gateways: [{name: relay, addresses: [10.20.0.25]}]
    switches: [{dpid: 1, uplinks: [1], name: good}, {dpid: 2, uplinks: [1], name: other}]
"""


def h1(rules):
    return any(r.match.ip_src == netaddr.IPNetwork("10.20.3.10/32") for r in rules)


def test_a_change_during_a_reconcile_is_never_lost(make_app):
    """The race of issue 23: an exception deleted (answered 200) while a
    reconnecting switch was being read, and the reconcile wrote what it had
    read before the delete. With one agent per switch the target is taken
    after the read, with its change number, and every later change is pushed
    after it: the deleted exception's flow is gone from the switch."""
    app = make_app()
    switch = connect(app)
    added, _ = app.change(lambda border: border.add(H1_OUT))
    assert h1(switch.rules())
    switch.disconnect()
    switch.answer_later = True  # replies come from the "socket", so the agent waits while reading
    deleted = []

    def on_request(msg_type, xid):
        if msg_type == OFP.OFPT_MULTIPART_REQUEST and not deleted:  # the reconcile reads the switch
            deleted.append(app.hub.spawn(app.change, lambda border: border.remove(added.subject.id)))

    switch.on_request = on_request
    switch.connect(app)
    assert settle(app, lambda: deleted and deleted[0].dead)
    outcome, report = deleted[0].wait()
    assert report["enforced"] == ["0000000000000001"]
    assert settle(app) and switch.rules() == desired(app) and not h1(switch.rules())


def test_a_silent_switch_costs_one_deadline_then_changes_do_not_wait_for_it(make_app):
    app = make_app(TWO, change_deadline=0.3, limits={"echo_idle": 3600, "reply_timeout": 1.0})
    good, silent = connect(app, 1), connect(app, 2)
    silent.silent = True  # hung after its first install
    asked = []
    agent = app.switches[2]
    real_waiter = agent.waiter
    agent.waiter = lambda number: asked.append(number) or real_waiter(number)
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == ["0000000000000001"] and report["pending"][0]["dpid"] == "0000000000000002"
    assert agent.lagging and asked == [1]
    _, report = app.change(lambda border: border.add(dict(H1_OUT, address="10.20.3.20")))
    assert asked == [1]  # not waited for again
    assert report["enforced"] == ["0000000000000001"]
    assert report["pending"][0]["reason"].startswith("slow: still delivering")
    assert good.rules() == desired(app, 1)  # the good switch has both changes
    silent.silent = False  # it answers again: its agent catches up, and later changes wait for it again
    assert settle(app, lambda: not agent.lagging and agent.in_sync, timeout=10)
    assert silent.rules() == desired(app, 2)
    _, report = app.change(lambda border: border.remove(next(e.id for e in app.policy.exceptions
                                                               if str(e.address) == "10.20.3.20/32")))
    assert report["enforced"] == ["0000000000000001", "0000000000000002"] and asked == [1, 3]


def test_a_silent_switch_is_dropped_by_liveness_and_its_twin_stays(make_app):
    app = make_app(TWO, limits={"echo_idle": 0.2, "echo_timeout": 0.2})
    good, silent = connect(app, 1), connect(app, 2)
    silent.silent = True
    assert settle(app, lambda: silent.closed, timeout=5)
    assert 2 not in app.switches and not good.closed and app.switches[1].in_sync
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == ["0000000000000001"]
    assert report["pending"] == [{"dpid": "0000000000000002", "name": "other", "reason": "not connected",
                                  "connected": False}]


def test_a_peer_that_sends_more_forever_is_closed_at_its_reply_limit(make_app):
    app = make_app(TWO, full_audit_every=1, limits={"min_reply_bytes": 256 * 1024})
    good, hostile = connect(app, 1), connect(app, 2)
    channel = app.channels[hostile]
    hostile.more_forever = True  # its next flow-stats reply never ends
    assert settle(app, lambda: hostile.closed, timeout=5)
    assert channel.dropped["oversized_replies"] == 1 and "multipart reply passed" in channel.closed
    assert 0 < hostile.sent("more_parts_sent")[0] < 100_000  # it stopped because it was closed, not at its own end
    assert 2 not in app.switches and app.switches[1].in_sync
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == ["0000000000000001"] and good.rules() == desired(app, 1)


def test_an_error_flood_is_dropped_said_once_and_closed_and_the_good_switch_is_served(make_app, caplog):
    app = make_app(TWO)
    good, hostile = connect(app, 1), connect(app, 2)
    with caplog.at_level(logging.WARNING):
        hostile.flood_errors(5000)
    assert hostile.closed
    said = [r for r in caplog.records if "over the limit of" in r.getMessage()]
    logged = [r for r in caplog.records if "OpenFlow error from switch 0000000000000002" in r.getMessage()]
    # (the burst, and what the rate refills while the flood lasts)
    assert len(said) == 1 and len(logged) <= Limits().errors_burst + 20
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == ["0000000000000001"] and h1(good.rules())


def test_an_echo_flood_is_closed_and_a_switchs_occasional_echo_is_not(make_app):
    app = make_app(TWO)
    good, hostile = connect(app, 1), connect(app, 2)
    good.flood_echoes(10)  # an idle switch's echoes: nothing to see
    hostile.flood_echoes(10_000)
    assert hostile.closed and not good.closed
    assert app.channels[good].dropped["echoes"] == 0
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == ["0000000000000001"]


def test_packet_ins_with_a_block_cookie_and_garbage_are_counted_never_a_traceback(make_app, caplog):
    app = make_app()
    switch = connect(app)
    cookie = make_cookie(Clause.PART2_BLOCK, 0x800)
    with caplog.at_level(logging.WARNING):
        for _ in range(100):
            switch.packet_in(cookie, GARBAGE)
    assert not [r for r in caplog.records if r.exc_info]
    assert app.counters[("samples_unreadable", 1)] == 100
    assert len([r for r in caplog.records if "does not parse" in r.getMessage()]) == 1
    # Its twin: a real sample is still recorded.
    from test_delivery import syn

    switch.packet_in(cookie, syn("10.20.3.10", "198.51.100.25"))
    assert [(a.src, a.direction) for a in app.audit.recent] == [("10.20.3.10", "outbound")]


def test_nonsense_table_features_fail_the_attempt_in_one_line_and_changes_do_not_retry_it(make_app, caplog):
    app = make_app(TWO, retry_min=5.0)  # its next try is 5 s after the first failure
    good = connect(app, 1)
    broken = FakeSwitch(2)
    broken.table_features = [_Absurd()]
    with caplog.at_level(logging.ERROR):
        broken.connect(app)
        assert settle(app, lambda: app.switches[2].failures >= 1)
        for n in range(20):  # REST changes do not cut its backoff short
            app.change(lambda border, n=n: border.add(dict(H1_OUT, address=f"10.20.4.{n + 1}", reason="x")))
        assert app.switches[2].failures == 1 and "table features reply cannot be read" in app.switches[2].pending
    assert not [r for r in caplog.records if r.exc_info]
    assert any("table features reply cannot be read" in r.getMessage() for r in caplog.records)
    assert good.rules() == desired(app, 1)


def test_a_switch_that_answers_nonsense_after_a_remembered_install_is_probed_afresh_and_not_enforcing(make_app):
    """A listed dpid reconnects with the same features reply (installed on the
    remembered probe), then answers the second look with nonsense: what it
    said before is forgotten, it is probed as on a first connection, and it
    is not reported enforcing while that fails."""
    app = make_app(TWO, retry_min=0.05)
    switch = connect(app, 2)
    switch.disconnect()
    switch.table_features = [_Absurd()]
    switch.connect(app)
    assert settle(app, lambda: app.switches[2].failures >= 2 and not app.switches[2].in_sync, timeout=5)
    assert 2 not in app.probes and "table features reply cannot be read" in app.switches[2].pending
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert "0000000000000002" not in report["enforced"]


# An IPv4 header that makes the framework's packet parser raise (AssertionError), found by fuzzing it.
GARBAGE = bytes.fromhex("0000000000000000000000000800453a83cbdca01c9fee4263bef1bd7588b9f871b133b0aed1b09e8e216fbfa971f64"
                        "16493")


class _Absurd:
    """A table-features entry whose length field claims far more than it carries."""

    def serialize(self):
        return b"\xff\xff\x00" + b"\x00" * 61


def test_a_scrape_reads_every_switch_at_once_and_a_silent_one_keeps_its_last_reading(make_app):
    """GET /metrics reads the block counters of every enforcing switch, all
    at once, each within a deadline: a silent switch is left out (its last
    reading stands), the good one is read (its twin)."""
    from ryu_apps import facade

    app = make_app(TWO, limits={"echo_idle": 3600, "reply_timeout": 30})
    good, silent = connect(app, 1), connect(app, 2)
    silent.silent = True
    good.log.clear()
    readings = facade.read_counters(app, seconds=0.2)
    assert set(readings) == {1} and good.sent("flow_stats")
    assert [name for name, _ in silent.log if name == "ignored"]  # it was asked, and said nothing


def test_a_switch_that_reconnects_alike_is_not_asked_its_tables_again(make_app):
    """The fixed cost of a connection (issue 23): Open vSwitch's table
    features are 1.26 MB and 20-30 ms. Asked once; a reconnection with the
    same features reply, after an install it confirmed, gets the same
    profile without asking; another features reply under the dpid (another
    device) is asked again, and so is a switch that refused its flows."""
    app = make_app()
    switch = connect(app)
    assert len(switch.sent("table_features")) == 1

    def reconnect():
        switch.disconnect()
        switch.log.clear()
        switch.table.clear()
        switch.connect(app)

    reconnect()
    assert settle(app) and switch.rules() == desired(app)
    # Installed on the remembered probe, then asked again off the install's path (one request).
    assert settle(app, lambda: len(switch.sent("table_features")) == 1 and not app.switches[1].recheck)
    # Its tables changed under the same features reply (here: its meters are gone): found by that
    # second look, re-probed, and reconciled to the new profile.
    switch.max_meters = 0
    reconnect()
    assert settle(app, lambda: not app.switches[1].choice.profile.meters and app.switches[1].in_sync)
    assert not any(r.instructions.sample_meter for r in switch.rules())
    switch.max_meters = 200_000
    switch.n_tables = 8  # another device answers for the dpid
    reconnect()
    assert settle(app) and switch.sent("table_features") and switch.rules() == desired(app)
    switch.refuse_flow_mods = 10**6  # refuses every flow: the probe is forgotten, not kept
    reconnect()
    assert settle(app, lambda: app.switches[1].failures >= 1) and 1 not in app.probes
    switch.refuse_flow_mods = 0
    reconnect()
    assert settle(app) and len(switch.sent("table_features")) == 1 and switch.rules() == desired(app)
    assert app.probes[1][0] == (8, 0, 0, 0)  # remembered with its features reply


def test_the_listed_switches_are_compiled_before_they_connect(make_app):
    """Border.warm at start: the first switch to connect after a start finds
    its flows compiled (one compile for switches alike), as later ones do."""
    app = make_app(TWO)
    assert settle(app, lambda: app.border._compiled, timeout=3)
    assert len(app.border._compiled) == 1  # two switches alike, one compile
    compiled = next(iter(app.border._compiled.values()))
    switch = connect(app, 1)
    assert next(iter(app.border._compiled.values())) is compiled and switch.rules() == desired(app, 1)
