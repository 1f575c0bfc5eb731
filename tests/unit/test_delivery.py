"""The Ryu app's delivery logic against fake switches (tests/fakeswitch.py):
the real app, its real event handlers, its bytes parsed back into tables.
Connections and reconnections, bundles and their absence, failed pushes and
retries, audits and drift, expiry, duplicate connections, counters."""
import dataclasses
import datetime
import textwrap
import time
from pathlib import Path

import netaddr
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ryu_apps import facade, openflow, wire
from ryu_apps.agent import FRAG_NX_MATCH, Agent
from smtp_border.policy import load_policy, parse_policy
from smtp_border.rules import (
    POLICY_TABLE, Clause, FlowRule, Instructions, Match, cookie_clause, make_cookie, with_version,
)
from smtp_border.semantics import Packet, is_allowed

import fakeswitch
import monitoring
from fakeswitch import OFP, FakeSwitch
from monitoring import dashboard_exprs, exported, metric_names, rule_exprs
from flowsim import outcomes

from appkit import H1_OUT, connect, desired, make_app_fixture, settle

make_app = pytest.fixture(make_app_fixture)


def flow_mods(switch):
    return switch.sent("flow_mod") + [m for bundle in switch.sent("bundle") for m in bundle]


def test_a_fresh_switch_gets_the_policy_in_one_bundle_after_its_meter(make_app):
    app = make_app()
    switch = connect(app)
    assert switch.rules() == desired(app)
    kinds = [name for name, _ in switch.log]
    assert kinds.index("meter_mod") < kinds.index("bundle")
    assert switch.sent("flow_mod") == []  # nothing outside the bundle
    assert all(m.command == switch.ofproto.OFPFC_ADD for m in flow_mods(switch))
    assert app.enforcement()["enforced"] == ["0000000000000001"]


def test_a_reconnecting_switch_that_holds_the_policy_gets_nothing_and_keeps_its_counters(make_app):
    app = make_app()
    switch = connect(app)
    switch.count(lambda cookie: cookie_clause(cookie) == Clause.PART2_BLOCK, 5)
    switch.disconnect()
    switch.log.clear()
    switch.connect(app)
    assert settle(app)
    assert flow_mods(switch) == []
    assert sum(s.packet_count for s in switch.table.values()) == 2 * 5  # IPv4 and IPv6 Part 2 flows
    assert switch.rules() == desired(app)


def test_stale_and_foreign_flows_are_replaced_on_connection(make_app):
    app = make_app()
    switch = FakeSwitch(1)
    hole = FlowRule(POLICY_TABLE, 350, Match(metadata=2, eth_type=0x800, ip_dst=netaddr.IPNetwork("10.20.3.0/24")),
                    Instructions(goto_table=2), 0x1234)
    switch.add_behind_the_back(wire.add_flow(hole))
    switch.connect(app)
    assert settle(app)
    assert switch.rules() == desired(app)


@pytest.mark.parametrize("bundles", ["auto", "off"])
def test_foreign_flows_in_every_owned_table_are_removed_with_or_without_bundles(make_app, bundles):
    app = make_app(bundles=bundles)
    switch = FakeSwitch(1, bundles=bundles == "auto")
    parser, ofp = switch.ofproto_parser, switch.ofproto
    for table in (0, 1, 2):
        switch.add_behind_the_back(parser.OFPFlowStats(
            table_id=table, duration_sec=0, duration_nsec=0, priority=1234, idle_timeout=0, hard_timeout=0, flags=0,
            cookie=0, packet_count=0, byte_count=0, match=parser.OFPMatch(eth_type=0x800, ipv4_src="192.0.2.1"),
            instructions=[parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(3)])]))
    switch.connect(app)
    assert settle(app)
    assert switch.rules() == desired(app)


def test_a_foreign_flow_in_a_desired_flows_place_is_replaced_not_deleted_after(make_app):
    """Same table, priority and match as a desired flow, other actions (or a
    timeout): the add replaces it; deleting it by its match afterwards would
    delete the desired flow too."""
    app = make_app()
    switch = FakeSwitch(1)
    target = next(r for r in desired(app) if r.clause == Clause.PART2_BLOCK)
    impostor = fakeswitch._stats_of(fakeswitch._parse_flow_mod(wire.add_flow(target)))
    impostor.instructions = [switch.ofproto_parser.OFPInstructionActions(
        switch.ofproto.OFPIT_APPLY_ACTIONS, [switch.ofproto_parser.OFPActionOutput(3)])]
    switch.add_behind_the_back(impostor)
    switch.connect(app)
    assert settle(app)
    assert switch.rules() == desired(app)


def test_flows_deleted_behind_the_controllers_back_are_repaired_by_the_audit(make_app):
    app = make_app()
    switch = connect(app)
    switch.table.clear()  # ovs-ofctl del-flows
    assert settle(app, lambda: switch.rules() == desired(app))
    status = facade.switch_status(app, 1)
    assert status["in_sync"] and status["repairs"] == 1 and status["last_audit"] and status["last_repair"]
    assert app.counters[("drift", "missing")] == len(desired(app))


def test_an_enforcing_switch_reads_first_fragments_ports_before_it_gets_flows(make_app):
    """OpenFlow's default fragment handling reads every fragment's ports as
    0; the app sets Nicira's nx-match (ports of first fragments) first."""
    app = make_app()
    switch = connect(app)
    assert switch.config_flags & 3 == FRAG_NX_MATCH
    kinds = [name for name, _ in switch.log]
    assert kinds.index("set_config") < kinds.index("bundle")
    assert facade.switch_status(app, 1)["fragments"] == "nx-match"
    inside = connect(app, dpid=9)  # forwarding only: its fragment handling is not ours to set
    assert inside.sent("set_config") == [] and facade.switch_status(app, 9)["fragments"] is None


def test_fragment_handling_changed_behind_the_controllers_back_is_restored(make_app):
    app = make_app()
    switch = connect(app)
    switch.config_flags = 0  # ovs-ofctl set-frags br normal
    assert settle(app, lambda: switch.config_flags == FRAG_NX_MATCH and app.switches[1].in_sync)
    assert app.counters[("drift", "config")] == 1
    assert switch.rules() == desired(app)


def test_a_switch_that_keeps_normal_fragment_handling_is_still_enforced_and_says_so(make_app):
    """It drops every first TCP fragment (they read as port 0): closed, not open."""
    app = make_app()
    switch = connect(app, fragment_modes=False)
    assert switch.rules() == desired(app)
    assert switch.config_flags == 0
    assert facade.switch_status(app, 1)["fragments"].startswith("mode 0: first TCP fragments are dropped")


def test_an_allow_flow_added_by_hand_is_removed_by_the_audit(make_app):
    app = make_app()
    switch = connect(app)
    hole = FlowRule(POLICY_TABLE, 350, Match(metadata=1, eth_type=0x800), Instructions(goto_table=2),
                    make_cookie(Clause.EXCEPTION_OUTBOUND, "hand"))
    switch.add_behind_the_back(wire.add_flow(hole))
    assert settle(app, lambda: switch.rules() == desired(app))
    assert app.counters[("drift", "extra")] == 1


def test_a_flow_changed_in_place_is_caught_by_the_full_audit(make_app):
    """Same key, other actions: the counts stay equal, so only the periodic
    full comparison sees it."""
    app = make_app(full_audit_every=3)
    switch = connect(app)
    block = next(r for r in desired(app) if r.clause == Clause.PART2_BLOCK)
    opened = FlowRule(block.table, block.priority, block.match, Instructions(goto_table=2), block.cookie)
    switch.add_behind_the_back(wire.add_flow(opened))
    assert opened in switch.rules()
    assert settle(app, lambda: switch.rules() == desired(app))
    assert app.counters[("drift", "changed")] == 1


def test_a_refused_push_is_answered_as_pending_then_retried_until_enforced(make_app):
    app = make_app(change_deadline=0.3)
    switch = connect(app)
    switch.refuse_flow_mods = 10**6  # the change's bundle fails on the switch, and every retry within the deadline
    outcome, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == []
    assert report["pending"][0]["connected"] and "OFPET_FLOW_MOD_FAILED" in report["pending"][0]["reason"]
    switch.refuse_flow_mods = 0
    assert settle(app)
    assert switch.rules() == desired(app)
    assert any(r.match.ip_src == netaddr.IPNetwork("10.20.3.10/32") for r in switch.rules())


def test_a_delete_whose_push_failed_still_withdraws_the_flow(make_app):
    app = make_app(change_deadline=0.1)  # shorter than the reply timeout (0.2 s)
    switch = connect(app)
    added, _ = app.change(lambda border: border.add(H1_OUT))
    switch.swallow_barriers = 1  # the switch never confirms the removal
    _, report = app.change(lambda border: border.remove(added.subject.id))
    assert report["pending"] and report["pending"][0]["reason"].startswith("slow: still delivering")
    assert settle(app)
    assert not any(r.match.ip_src == netaddr.IPNetwork("10.20.3.10/32") for r in switch.rules())
    assert switch.rules() == desired(app)


def test_a_crash_while_delivering_is_reported_never_as_done(make_app, monkeypatch):
    app = make_app(change_deadline=0.3)
    switch = connect(app)
    real = openflow.apply_diff
    monkeypatch.setattr(openflow, "apply_diff", lambda diff: 1 / 0)
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == [] and "ZeroDivisionError" in report["crashed"][1]
    assert "division by zero" in report["pending"][0]["reason"]
    monkeypatch.setattr(openflow, "apply_diff", real)
    assert settle(app)  # the worker reconciles it all the same
    assert switch.rules() == desired(app)


def test_listed_switches_that_are_not_connected_are_pending(make_app):
    app = make_app("""
        campus: {prefixes: [10.20.0.0/16]}
        switches: [{dpid: 1, uplinks: [1], name: north}, {dpid: 2, uplinks: [1], name: south}]
    """)
    connect(app, 1)
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == ["0000000000000001"]
    assert report["pending"] == [{"dpid": "0000000000000002", "name": "south", "reason": "not connected", "connected": False}]


def test_an_expiry_while_a_switch_is_away_is_enforced_when_it_returns(make_app):
    app = make_app()
    switch = connect(app)
    soon = dict(H1_OUT, expires="2099-01-01T00:00:00Z")
    app.change(lambda border: border.add(soon))
    assert any(r.match.ip_src == netaddr.IPNetwork("10.20.3.10/32") for r in switch.rules())
    switch.disconnect()
    report = app.expire(datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc))
    assert report["enforced"] == [] and report["pending"][0]["reason"] == "not connected"
    switch.connect(app)
    assert settle(app)
    assert not any(r.match.ip_src == netaddr.IPNetwork("10.20.3.10/32") for r in switch.rules())


def test_the_expiry_loop_survives_an_unexpected_error(make_app, monkeypatch):
    app = make_app(expiry_seconds=0.01)
    calls = []

    def flaky(now):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("boom")

    monkeypatch.setattr(app.border, "expire", flaky)
    assert settle(app, lambda: len(calls) >= 3)


def test_a_second_connection_claiming_a_live_switchs_dpid_is_closed(make_app):
    """Any TCP peer can claim any dpid. The switch already connected answers
    an echo, so it keeps its dpid; the newcomer is closed and counted, and
    changes still reach the real switch."""
    app = make_app()
    real = connect(app)
    impostor = FakeSwitch(1)
    impostor.connect(app)
    assert settle(app, lambda: impostor.closed)
    assert app.switches[1].dp is real and app.counters[("duplicate_dpid_refused", 1)] == 1
    assert impostor.sent("flow_mod") == impostor.sent("bundle") == []  # it was told nothing
    app.change(lambda border: border.add(H1_OUT))
    assert real.rules() == desired(app)


def test_a_switch_that_reconnects_while_its_old_connection_is_dead_takes_over(make_app):
    app = make_app(echo_timeout=0.05)
    old = connect(app)
    old.answers_echo = False  # the old TCP connection is dead but not yet timed out
    new = FakeSwitch(1)
    new.connect(app)
    assert settle(app, lambda: 1 in app.switches and app.switches[1].dp is new and app.switches[1].in_sync)
    assert old.closed and not new.closed
    app.change(lambda border: border.add(H1_OUT))
    assert new.rules() == desired(app)


class _TlsSocket:
    def __init__(self, certificate):
        self.certificate = certificate

    def getpeercert(self, binary_form=False):
        return self.certificate


def test_a_dpid_pinned_to_a_certificate_takes_only_that_one(make_app):
    import hashlib
    genuine, other = b"genuine certificate (DER)", b"another campus certificate"
    app = make_app(f"""
        campus: {{prefixes: [10.20.0.0/16]}}
        switches: [{{dpid: 1, uplinks: [1], certificate_sha256: "{hashlib.sha256(genuine).hexdigest()}"}}]
    """)
    for certificate in (other, None):
        impostor = FakeSwitch(1)
        impostor.socket = _TlsSocket(certificate)
        impostor.connect(app)
        assert impostor.closed and 1 not in app.switches
    assert app.counters[("certificate_refused", 1)] == 2
    real = FakeSwitch(1)
    real.socket = _TlsSocket(genuine)
    real.connect(app)
    assert settle(app) and app.switches[1].dp is real and real.rules() == desired(app)


def syn(src, dst, dport=25):
    from ryu_apps.framework import ethernet, ipv4, packet, tcp
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=src, dst=dst, proto=6))
    pkt.add_protocol(tcp.tcp(src_port=40000, dst_port=dport, bits=tcp.TCP_SYN))
    pkt.serialize()
    return bytes(pkt.data)


def test_only_block_flows_of_enforcing_switches_write_the_audit(make_app):
    """A peer that opened an OpenFlow connection (here as an inside switch,
    dpid 9) cannot accuse a host, nor can a packet-in with a cookie that is
    not one of our block flows; the genuine sample is recorded."""
    app = make_app()
    border = connect(app)
    peer = connect(app, 9)
    part2 = make_cookie(Clause.PART2_BLOCK, 0x800)
    accusation = syn("10.20.3.10", "198.51.100.25")
    peer.packet_in(part2, accusation)
    border.packet_in(make_cookie(Clause.EXCEPTION_OUTBOUND, "x"), accusation)
    border.packet_in(part2, accusation, table_id=0)
    assert list(app.audit.recent) == []
    assert app.counters[("samples_refused", 9)] == 1 and app.counters[("samples_refused", 1)] == 2
    border.packet_in(part2, accusation)  # the twin: a real sample from the border's block flow
    assert [(a.src, a.switch) for a in app.audit.recent] == [("10.20.3.10", "0000000000000001")]
    metrics = generate_latest(app.metrics_registry).decode()
    assert 'smtp_border_audit_samples_refused_total{switch="0000000000000009"} 1.0' in metrics
    assert 'smtp_border_audit_samples_total{switch="0000000000000001"} 1.0' in metrics


def test_a_slave_reads_a_switch_without_bundles_in_either_policy_table_version(make_app):
    """A replica that is slave for a switch reads it to answer for changes
    (and for GET /switches and /metrics): a switch without bundles holds its
    policy table as version 0 or 1 (smtp_border/ordering.py), the core's
    rules are version 0; both must read as holding the policy."""
    policy = """
        campus: {prefixes: [%s]}
        gateways: [{name: relay, addresses: [10.20.0.25]}]
        switches: [{dpid: 1, uplinks: []}]
    """
    app = make_app(policy % "10.20.0.0/16, 10.40.0.0/16", audit_seconds=3600)  # no audit of its own meanwhile
    switch = connect(app, bundles=False)
    Path(app.store.policy_file).write_text(textwrap.dedent(policy % "10.20.0.0/16, 10.50.0.0/16"))
    app.change(lambda border: border.reload())
    assert facade.switch_status(app, 1)["version"] == 1 and switch.rules() == {with_version(r, 1) for r in desired(app)}
    # As a slave would find it: its master (here, the app before) wrote it.
    state = app.switches[1]
    state.role, state.in_sync, state.master = "slave", False, "other"
    state.observe()
    assert state.holds and state.enforces and facade.switch_status(app, 1)["in_sync"], state.pending
    assert app.enforcement()["enforced"] == ["0000000000000001"]
    # A change the master delivers, read by cookie, in version 1 on the switch.
    exception = FlowRule(POLICY_TABLE, 400, Match(metadata=2, eth_type=0x800, ip_src=netaddr.IPNetwork("10.50.3.10/32")),
                         Instructions(goto_table=2), make_cookie(Clause.EXCEPTION_OUTBOUND, 77))
    diff = type("Diff", (), {"add": (exception,), "delete": ()})()
    assert not state.seen_on_switch(diff, timeout=0.2)
    switch.add_behind_the_back(wire.add_flow(with_version(exception, 1)))
    assert state.seen_on_switch(diff, timeout=0.2)
    # The slave's reading now differs from the policy in force: it says so, and repairs nothing.
    switch.log.clear()
    state.observe()
    assert not state.holds and "its master repairs" in state.pending
    assert app.enforcement()["pending"][0]["reason"].startswith("delivered by its master")
    assert flow_mods(switch) == []


def test_without_bundles_a_campus_change_never_opens_what_both_policies_block(make_app):
    """The reload that leaked through the union (smtp_border/ordering.py):
    after every single flow mod the switch receives, every probe is judged
    as the old policy or the new one judges it."""
    policy = """
        campus: {prefixes: [%s]}
        gateways: [{name: relay, addresses: [10.20.0.25]}]
        switches: [{dpid: 1, uplinks: []}]
    """
    app = make_app(policy % "10.20.0.0/16, 10.40.0.0/16")
    switch = connect(app, bundles=False)
    assert switch.rules() == desired(app)
    assert switch.sent("refused_bundle")
    old = app.policy
    switch.table_history.clear()
    Path(app.store.policy_file).write_text(textwrap.dedent(policy % "10.20.0.0/16, 10.50.0.0/16"))
    _, report = app.change(lambda border: border.reload())
    assert report["enforced"] == ["0000000000000001"]
    new = app.policy
    addresses = ["10.50.1.1", "10.40.1.1", "10.20.1.1", "10.20.0.25", "192.0.2.1"]
    probes = [Packet(in_port=port, src=netaddr.IPAddress(s), dst=netaddr.IPAddress(d), dst_port=25)
              for port in (1, 2) for s in addresses for d in addresses if s != d]
    assert len(switch.table_history) > 5
    for table in switch.table_history:
        rules = {openflow.rule_from_flow(s) for s in table.values()}
        for packet in probes:
            agreed = is_allowed(old, 1, packet)
            if agreed == is_allowed(new, 1, packet):
                assert outcomes(rules, packet) == {agreed}, packet
    # The probes hold packets both block (10.50.1.1 -> 10.40.1.1) and both allow.
    agreeing = {is_allowed(old, 1, p) for p in probes if is_allowed(old, 1, p) == is_allowed(new, 1, p)}
    assert agreeing == {True, False}
    assert facade.switch_status(app, 1)["version"] == 1
    assert switch.rules() == {with_version(r, 1) for r in desired(app)}
    # No bundle was tried after the first refusal, and no table was ever flushed.
    assert max(switch.sent("refused_bundle")) < min(m.xid for m in switch.sent("flow_mod"))
    assert switch.sent("bundle") == []
    assert all(m.command != switch.ofproto.OFPFC_DELETE for m in flow_mods(switch))


def test_blocked_counters_never_decrease_when_flows_are_replaced_or_the_switch_restarts(make_app):
    policy = """
        campus: {prefixes: [%s]}
        switches: [{dpid: 1, uplinks: [1]}]
    """
    app = make_app(policy % "10.20.0.0/16")
    switch = connect(app)
    part1 = lambda cookie: cookie_clause(cookie) == Clause.PART1_BLOCK  # noqa: E731
    switch.count(part1, 7)
    app.switches[1].read_block_counters()
    assert app.block_counters.totals()[1, "inbound"][0] == 7
    # A reload replaces the Part 1 flow (another campus prefix): its 7 stay counted.
    Path(app.store.policy_file).write_text(textwrap.dedent(policy % "10.30.0.0/16"))
    app.change(lambda border: border.reload())
    switch.count(part1, 2)
    app.switches[1].read_block_counters()
    assert app.block_counters.totals()[1, "inbound"][0] == 9
    # The switch restarts (counters back to zero) and reconnects.
    switch.disconnect()
    for stats in switch.table.values():
        stats.packet_count = stats.byte_count = 0
    switch.count(part1, 1)
    switch.connect(app)
    assert settle(app)
    app.switches[1].read_block_counters()
    assert app.block_counters.totals()[1, "inbound"][0] == 10


def test_an_api_exception_the_file_contradicts_is_quarantined_and_the_rest_enforced(make_app, tmp_path):
    from smtp_border import state
    state.StateFile(tmp_path / "state.json").rewrite([
        {"address": "10.99.0.1/32", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "outside the campus now"},
        dict(H1_OUT, address="10.20.3.10/32"),
    ])
    app = make_app()
    switch = connect(app)
    assert [q.address for q in app.store.quarantined] == ["10.99.0.1/32"]
    assert switch.rules() == desired(app)
    assert any(r.match.ip_src == netaddr.IPNetwork("10.20.3.10/32") for r in switch.rules())
    assert load_policy(app.store.policy_file).exceptions == app.store.file_policy.exceptions


# -- pipeline profiles (smtp_border/pipeline.py, issue 14) -------------------------

ONE_TABLE = """
    campus: {prefixes: [10.20.0.0/16, "fd00:20::/48"]}
    gateways: [{name: relay, addresses: [10.20.0.25]}]
    switches: [{dpid: 1, uplinks: [1], %s}]
"""


def hardware_messages(switch):
    """Everything the app sent that needs more than one plain table: a
    bundle, a meter, write-metadata, goto-table or a meter instruction."""
    found = [name for name, _ in switch.log if name in ("bundle", "refused_bundle", "meter_mod")]
    for mod in flow_mods(switch):
        for ins in mod.instructions:
            if ins.type in (switch.ofproto.OFPIT_WRITE_METADATA, switch.ofproto.OFPIT_GOTO_TABLE,
                            switch.ofproto.OFPIT_METER):
                found.append(type(ins).__name__)
    return found


def test_single_table_without_meters_or_bundles_sends_only_plain_flow_mods(make_app):
    app = make_app(ONE_TABLE % "pipeline: single_table, meters: false, bundles: false")
    switch = connect(app)
    assert switch.rules() == app.border.flows(1) and {r.table for r in switch.rules()} == {0}
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == ["0000000000000001"]
    assert switch.rules() == app.border.flows(1) == app.border.profile(1).compile(app.policy, 1)
    assert any(r.match.ip_src == netaddr.IPNetwork("10.20.3.10/32") for r in switch.rules())
    assert hardware_messages(switch) == [] and switch.sent("flow_mod")
    status = facade.switch_status(app, 1)
    assert status["pipeline"]["pipeline"] == "single_table" and status["pipeline"]["chosen"] == "policy"
    assert not status["pipeline"]["meters"] and status["bundles"] is False
    # Its twin on the same fake switch: the three-table pipeline does send them.
    app = make_app(ONE_TABLE % "pipeline: multi_table")
    assert hardware_messages(connect(app)) != []


@pytest.mark.parametrize("shape, table, meters", [("dell_os9", 0, False), ("of_dpa", 60, True),
                                                  ("aruba_3810", 100, True), ("open_vswitch", None, True)])
def test_auto_gives_each_switch_family_the_profile_its_tables_allow(make_app, shape, table, meters):
    app = make_app(ONE_TABLE % "name: edge")
    switch = connect(app, shape=shape, max_meters=None if not meters else 4096, bundles=shape == "open_vswitch")
    profile = app.border.profile(1)
    if table is None:
        assert profile.name == "multi_table" and {r.table for r in switch.rules()} == {0, 1, 2}
    else:
        assert (profile.name, profile.table, profile.meters) == ("single_table", table, meters)
        assert {r.table for r in switch.rules()} == {table}
    assert switch.rules() == app.border.flows(1)
    assert bool(switch.sent("meter_mod")) == meters
    status = facade.switch_status(app, 1)
    assert status["pipeline"]["chosen"] == "auto" and status["pipeline"]["reasons"]
    assert status["entries"]["needed"] == len([r for r in switch.rules() if r.table == profile.exception_table])
    # A blocked packet's sample counts from the table that blocks it, not another.
    part2 = make_cookie(Clause.PART2_BLOCK, 0x800)
    switch.packet_in(part2, syn("10.20.3.10", "198.51.100.25"), table_id=profile.exception_table)
    assert [a.src for a in app.audit.recent] == ["10.20.3.10"]
    switch.packet_in(part2, syn("10.20.3.11", "198.51.100.25"), table_id=7)
    assert app.counters[("samples_refused", 1)] == 1


def test_a_switch_over_its_budget_gets_nothing_and_says_why(make_app):
    app = make_app(ONE_TABLE % "pipeline: single_table, table_size: 10")
    switch = FakeSwitch(1)
    switch.connect(app)
    assert settle(app, until=lambda: app.switches[1].failures)
    assert flow_mods(switch) == [] and switch.rules() == set()
    reason = facade.switch_status(app, 1)["pending"]
    needed = app.border.budget(1)[0]
    assert f"would need {needed} entries in table 0, and has 10 (from policy)" in reason and needed > 10


def test_an_api_change_past_the_tables_size_is_refused_and_one_that_fits_goes_through(make_app):
    from smtp_border.pipeline import SINGLE, OverBudget, Profile

    text = textwrap.dedent(ONE_TABLE % "pipeline: single_table")
    size = len(Profile.named(SINGLE).compile(parse_policy(text), 1)) + 1  # room for one exception flow
    app = make_app(ONE_TABLE % f"pipeline: single_table, table_size: {size}")
    switch = connect(app)
    _, report = app.change(lambda border: border.add(H1_OUT))  # fits exactly
    assert report["enforced"] == ["0000000000000001"] and len(switch.rules()) == size
    before = switch.rules()
    with pytest.raises(OverBudget) as err:
        app.change(lambda border: border.add({"address": "10.20.3.11", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "r"}))
    assert (err.value.needed, err.value.available) == (size + 1, size)
    assert switch.rules() == before == app.border.flows(1)
    assert "10.20.3.11" not in str([e.address for e in app.policy.exceptions])


def test_a_switch_whose_table_is_full_gets_nothing_half_applied_and_the_answer_says_so(make_app):
    app = make_app(ONE_TABLE % "pipeline: single_table")
    switch = connect(app)
    before = switch.rules()
    switch.flow_limit = len(before)  # full: the switch, not the budget, refuses
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == [] and "OFPFMFC_TABLE_FULL" in report["pending"][0]["reason"]
    assert switch.rules() == before  # the bundle failed whole
    switch.flow_limit = None
    assert settle(app) and switch.rules() == app.border.flows(1)


def test_metrics_show_each_switchs_entries_and_budget(make_app):
    app = make_app(ONE_TABLE % "pipeline: single_table, table_size: 500")
    switch = connect(app)
    metrics = generate_latest(app.metrics_registry).decode()
    assert f'smtp_border_table_entries{{switch="0000000000000001",table="0"}} {float(len(switch.rules()))}' in metrics
    assert 'smtp_border_table_budget{switch="0000000000000001",table="0"} 500.0' in metrics


def test_blocked_says_which_switches_block_without_samples(make_app):
    """GET /blocked and /blocked/top carry it (the handlers add _unsampled())."""
    from ryu_apps import rest

    app = make_app(ONE_TABLE % "pipeline: single_table, meters: false")
    switch = connect(app)
    assert not switch.sent("meter_mod") and not any(r.instructions.sample_meter for r in switch.rules())
    controller = rest.SmtpRestController(app)
    assert controller._unsampled()["unsampled_switches"] == ["0000000000000001"]
    twin = make_app(ONE_TABLE % "pipeline: single_table")  # with meters: nothing to say
    connect(twin)
    assert rest.SmtpRestController(twin)._unsampled() == {}


def test_the_dashboard_and_rules_name_only_metrics_the_app_exports(make_app):
    """The collector of a real app (its Ryu event handlers, no switch):
    every family exists even without samples."""
    app = make_app()
    text = generate_latest(app.metrics_registry).decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    named = metric_names(dashboard_exprs() + rule_exprs()) - monitoring.PROMETHEUS_OWN
    assert len(named) >= 20
    assert {n for n in named if not exported(n, families, samples)} == set()


class FakeMastership:
    """The master keys as etcd holds them (smtp_border/etcdstate.Mastership,
    tested against a real etcd in tests/integration): dpid -> (replica,
    generation id), shared by the replicas of a test, with a lease that holds."""

    def __init__(self, replica, masters):
        self.replica, self.masters = replica, masters
        self.lease_ok = self.holds_lease = True
        self.ttl = 5

    def claim(self, dpid):
        return self.masters.setdefault(dpid, (self.replica, max([g for _, g in self.masters.values()] or [0]) + 1))

    def release(self, dpid, generation):
        if self.masters.get(dpid, (None, None))[1] == generation:
            del self.masters[dpid]


def as_written_by_its_master(app, dpid=1):
    """A switch holding the policy as another controller wrote it."""
    switch = FakeSwitch(dpid)
    for rule in desired(app, dpid):
        switch.add_behind_the_back(wire.add_flow(rule))
    return switch


WRITES = ("flow_mod", "bundle", "meter_mod", "set_config")


def test_a_slave_writes_nothing_reads_the_switch_and_gets_the_samples(make_app, monkeypatch):
    app = make_app()
    app.mastership = FakeMastership("me", {1: ("other", 7)})
    switch = as_written_by_its_master(app)
    switch.connect(app)
    assert settle(app, until=lambda: app.switches[1].holds), app.switches[1].pending
    assert (switch.role, switch.generation) == ("slave", 7)
    assert [name for name, _ in switch.log if name in WRITES + ("refused_slave",)] == []
    # Asked for blocked-attempt samples as slave too; flow-removed stays the master's.
    packet_in, _, flow_removed = switch.async_config
    assert packet_in == (1 << OFP.OFPR_NO_MATCH | 1 << OFP.OFPR_ACTION, 1 << OFP.OFPR_ACTION) and flow_removed[1] == 0
    assert switch.sent("set_async") and [n for n, _ in switch.log].index("set_async") < [n for n, _ in switch.log].index(
        "role_request")
    status = facade.switch_status(app, 1)
    assert (status["in_sync"], status["openflow_role"], status["master"], status["generation"]) == (True, "slave", "other", 7)
    assert app.enforcement()["enforced"] == ["0000000000000001"]
    switch.packet_in(make_cookie(Clause.PART2_BLOCK, 0x800), syn("10.20.3.10", "198.51.100.25"))
    assert [(a.src, a.direction) for a in app.audit.recent] == [("10.20.3.10", "outbound")]
    # A change made on the slave: pending (its master delivers) until read on the switch; nothing sent.
    app.timing = dataclasses.replace(app.timing, confirm_seconds=0.2)
    outcome, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == [] and report["pending"][0]["reason"] == "delivered by its master, controller other"
    for rule in outcome.diffs[1].add:  # the master delivers it
        switch.add_behind_the_back(wire.add_flow(rule))
    assert settle(app, until=lambda: app.switches[1].holds)
    assert app.enforcement()["enforced"] == ["0000000000000001"]
    # A change that came from the other controller (etcd): not waited for; the
    # slave's next audit reads the flows it touches by cookie, not every flow.
    dumps = []
    agent = app.switches[1]
    monkeypatch.setattr(agent, "switch_flows", lambda timeout=None: dumps.append(1) or Agent.switch_flows(agent, timeout))
    started = time.monotonic()
    outcome, report = app.change(lambda border: border.add(dict(H1_OUT, address="10.20.3.20")), confirm=False,
                                 source="replica")
    assert time.monotonic() - started < 0.1 and not app.switches[1].holds and app.switches[1].unseen
    assert not settle(app, until=lambda: app.switches[1].holds, timeout=0.3)  # its master has not delivered yet
    for rule in outcome.diffs[1].add:
        switch.add_behind_the_back(wire.add_flow(rule))
    assert settle(app, until=lambda: app.switches[1].holds) and dumps == []
    assert [name for name, _ in switch.log if name in WRITES + ("refused_slave",)] == []


def test_a_slave_whose_master_went_takes_over_without_a_flush(make_app):
    app = make_app()
    masters = {1: ("other", 7)}
    app.mastership = FakeMastership("me", masters)
    switch = as_written_by_its_master(app)
    switch.connect(app)
    assert settle(app, until=lambda: app.switches[1].holds)
    masters[1] = ("me", 8)  # the other's lease lapsed; this replica won the key
    assert settle(app, until=lambda: app.switches[1].in_sync)
    assert (switch.role, switch.generation) == ("master", 8)
    # Reconciled from what the switch held: its flows were right, so none is sent, none deleted.
    assert flow_mods(switch) == [] and switch.rules() == desired(app)
    assert switch.sent("meter_mod")  # the audit meters are the master's to set


def test_a_fenced_master_steps_down_and_a_stale_generation_never_writes(make_app):
    app = make_app()
    masters = {1: ("me", 3)}
    app.mastership = FakeMastership("me", masters)
    switch = FakeSwitch(1)
    switch.connect(app)
    assert settle(app) and (switch.role, switch.generation) == ("master", 3)
    assert switch.rules() == desired(app)
    # Another controller took the switch (generation 9) while this one still believed it was master.
    masters[1] = ("third", 9)
    switch.demote(9)
    before = dict(switch.table)
    _, report = app.change(lambda border: border.add(H1_OUT))
    assert report["enforced"] == [] and switch.sent("refused_slave")
    assert switch.table == before  # refused: nothing of it reached the table
    assert settle(app, until=lambda: app.switches[1].role == "slave" and app.switches[1].master == "third")
    # The twin: told it is master again, but with a generation older than the switch has seen: refused as stale.
    masters[1] = ("me", 5)
    app.switches[1].role = None
    app.switches[1].wake.set()
    assert not settle(app, until=lambda: app.switches[1].in_sync, timeout=0.5)
    assert switch.role == "slave" and switch.table == before
    masters[1] = ("me", 10)  # a newer claim: master, and the change goes out
    assert settle(app, until=lambda: app.switches[1].in_sync)
    assert (switch.role, switch.generation) == ("master", 10) and switch.rules() == desired(app)


def test_verify_needs_the_read_token_runs_on_the_agents_and_is_rate_limited(make_app, monkeypatch):
    """GET /switches?verify=1 reads every flow of every switch: the read
    token, at most once every SMTP_POLICY_VERIFY_SECONDS; plain GET /switches
    needs nothing and asks no switch (its twin)."""
    from webob import Request

    from ryu_apps import rest, web

    monkeypatch.setenv(rest.TOKEN_ENV, "change-token")
    monkeypatch.setenv(rest.READ_TOKEN_ENV, "read-token")
    app = make_app()
    switch = connect(app)
    api = web.Application(rest.SmtpRestController(app))

    def get(path, token=None):
        req = Request.blank(path)
        if token:
            req.headers["Authorization"] = f"Bearer {token}"
        return req.get_response(api)

    switch.log.clear()
    assert get("/smtp/v1/switches").status_int == 200 and not switch.sent("flow_stats")
    assert get("/smtp/v1/switches?verify=1").status_int == 401 and not switch.sent("flow_stats")
    answer = get("/smtp/v1/switches?verify=1", "read-token")
    assert answer.status_int == 200 and switch.sent("flow_stats")  # its agent read every flow
    assert answer.json["switches"][0]["full_audit_ms"] is not None
    again = get("/smtp/v1/switches?verify=1", "read-token")
    assert again.status_int == 429 and int(again.headers["Retry-After"]) >= 1
