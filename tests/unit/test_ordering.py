"""Changes without bundles (smtp_border/ordering.py): after every single flow
mod, every packet is judged as the old policy or the new one judges it, so
what both block stays blocked and what both allow stays allowed."""
import netaddr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_border.compiler import compile_switch
from smtp_border.diff import diff_rules
from smtp_border.ordering import ADD, plan
from smtp_border.policy import parse_policy
from smtp_border.rules import with_version
from smtp_border.semantics import Packet, is_allowed

from flowsim import outcomes
from strategies import NOW, packets, policies, examples

SETTINGS = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def steps(before, phases):
    """The switch's table after each flow mod, one at a time."""
    table = {r.key: r for r in before}
    yield set(table.values())
    for phase in phases:
        for op, rule in phase:
            if op == ADD:
                table[rule.key] = rule
            else:
                del table[rule.key]
            yield set(table.values())


def leaks(old, new, dpid, before, phases, probes):
    """(step, packet, verdicts) wherever old and new agree and the table does not."""
    found = []
    for number, table in enumerate(steps(before, phases)):
        for packet in probes:
            agreed = is_allowed(old, dpid, packet, NOW)
            if agreed == is_allowed(new, dpid, packet, NOW) and outcomes(table, packet) != {agreed}:
                found.append((number, packet, outcomes(table, packet)))
    return found


@SETTINGS
@given(data=st.data(), old=policies(), new=policies(), old_version=st.sampled_from([0, 1]), dpid=st.integers(1, 3))
def test_every_step_judges_each_packet_as_old_or_new(data, old, new, old_version, dpid):
    before = {with_version(r, old_version) for r in compile_switch(old, dpid, NOW)}
    after = compile_switch(new, dpid, NOW)
    version, phases = plan(before, after)
    probes = data.draw(st.lists(st.one_of(packets(old, dpid), packets(new, dpid)), min_size=1, max_size=40))
    assert leaks(old, new, dpid, before, phases, probes) == []
    # And it ends exactly at the new policy, in the version it names.
    *_, final = steps(before, phases)
    assert final == {with_version(r, version) for r in after}


@SETTINGS
@given(old=policies(), dpid=st.integers(1, 3))
def test_from_empty_tables_no_packet_is_forwarded_before_its_policy_is_whole(old, dpid):
    """A fresh switch (fail-mode secure, empty tables: everything dropped)
    gets its policy with no step that allows what the policy blocks."""
    after = compile_switch(old, dpid, NOW)
    version, phases = plan(set(), after)
    assert version == 0
    probes = [Packet(in_port=p, src=s, dst=d, dst_port=port)
              for version in (4, 6) for s in _edges(old, version) for d in _edges(old, version)
              for p in (1, 2) for port in old.smtp_ports[:1]]
    for table in steps(set(), phases):
        for packet in probes:
            assert outcomes(table, packet) <= {False, is_allowed(old, dpid, packet, NOW)}


def _edges(policy, version):
    networks = [n for n in list(policy.campus) + [e.address for e in policy.exceptions] if n.version == version]
    return sorted({n[0] for n in networks} | {n[-1] for n in networks} | {n[0] - 1 for n in networks})[:6]


CAMPUS_CHANGE = """
campus: {prefixes: [%s]}
switches: [{dpid: 1, uplinks: []}]  # by addresses: where the classification follows the prefixes
"""


def test_the_campus_change_that_leaked_through_the_union():
    """[10.20/16, 10.40/16] -> [10.20/16, 10.50/16]: 10.50.1.1 -> 10.40.1.1:25
    is blocked by both (Part 1 before, Part 2 after). Adding every new flow
    before deleting the old ones lets it through; the plan never does."""
    old = parse_policy(CAMPUS_CHANGE % "10.20.0.0/16, 10.40.0.0/16")
    new = parse_policy(CAMPUS_CHANGE % "10.20.0.0/16, 10.50.0.0/16")
    before, after = compile_switch(old, 1, NOW), compile_switch(new, 1, NOW)
    packet = Packet(in_port=2, src=netaddr.IPAddress("10.50.1.1"), dst=netaddr.IPAddress("10.40.1.1"), dst_port=25)
    twin = Packet(in_port=2, src=netaddr.IPAddress("10.20.1.1"), dst=netaddr.IPAddress("10.20.2.2"), dst_port=25)
    assert not is_allowed(old, 1, packet) and not is_allowed(new, 1, packet)
    assert is_allowed(old, 1, twin) and is_allowed(new, 1, twin)

    diff = diff_rules(before, after)
    naive = [[(ADD, r) for r in diff.add], [("delete", r) for r in diff.delete]]
    assert any(p == packet for _, p, _ in leaks(old, new, 1, before, naive, [packet, twin]))

    version, phases = plan(before, after)
    assert version == 1  # the classification changes: two-phase, under the other version
    assert leaks(old, new, 1, before, phases, [packet, twin]) == []


def test_exception_changes_stay_in_the_version_the_switch_holds():
    old = parse_policy(CAMPUS_CHANGE % "10.20.0.0/16")
    new = parse_policy(CAMPUS_CHANGE % "10.20.0.0/16" + "exceptions: [{address: 10.20.3.4, direction: both, reason: r}]\n")
    before = {with_version(r, 1) for r in compile_switch(old, 1, NOW)}
    version, phases = plan(before, compile_switch(new, 1, NOW))
    assert version == 1
    assert [[op for op, _ in phase] for phase in phases] == [[ADD, ADD]]


# -- one table (the single_table profile) ---------------------------------------


def one_table_leaks(new, dpid, before, phases, probes, table_id):
    """(step, packet, outcome) wherever the table judges a packet other than
    the switch did before the change (`before`, flows not ours included),
    the new policy does, or drop."""
    found = []
    for number, table in enumerate(steps(before, phases)):
        for packet in probes:
            allowed = outcomes(before, packet, start=table_id) | {is_allowed(new, dpid, packet, NOW)}
            got = outcomes(table, packet, start=table_id)
            if not got <= allowed | {False}:
                found.append((number, packet, got))
    return found


@SETTINGS
@given(data=st.data(), old=policies(), new=policies(), dpid=st.integers(1, 3), table_id=st.sampled_from([0, 60]),
       foreign=st.booleans())
def test_one_table_every_step_is_old_new_or_a_drop(data, old, new, dpid, table_id, foreign):
    """Without a version bit, a change on a one-table switch may drop for a
    moment what both policies allow, never let through what both block; it
    ends exactly at the new flows (foreign flows, whatever they do, gone)."""
    from smtp_border.ordering import plan_one_table
    from smtp_border.rules import FlowRule, Instructions, Match
    from smtp_border.single_table import compile_single_table

    before = set(compile_single_table(old, dpid, NOW, table=table_id))
    if foreign:  # a hand-made allow above everything, port 25 included
        before.add(FlowRule(table_id, 450, Match(eth_type=0x0800), Instructions(output_normal=True), 0))
    after = compile_single_table(new, dpid, NOW, table=table_id)
    phases = plan_one_table(before, after)
    probes = data.draw(st.lists(st.one_of(packets(old, dpid), packets(new, dpid)), min_size=1, max_size=40))
    assert one_table_leaks(new, dpid, before, phases, probes, table_id) == []
    *_, final = steps(before, phases)
    assert final == set(after)


@SETTINGS
@given(data=st.data(), old=policies(), dpid=st.integers(1, 3))
def test_one_table_exception_changes_never_open_what_both_block(data, old, dpid):
    """The push path (a RuleDiff of exceptions, phases from one_table_phases)."""
    from smtp_border.ordering import one_table_phases
    from smtp_border.single_table import compile_single_table

    new = data.draw(policies())
    new = new.__class__(**{**vars(old), "exceptions": new.exceptions}) if new.campus == old.campus else old
    before = compile_single_table(old, dpid, NOW)
    after = compile_single_table(new, dpid, NOW)
    diff = diff_rules(before, after)
    phases = one_table_phases(diff.add, diff.delete)
    probes = data.draw(st.lists(st.one_of(packets(old, dpid), packets(new, dpid)), min_size=1, max_size=40))
    assert one_table_leaks(new, dpid, before, phases, probes, 0) == []
    *_, final = steps(before, phases)
    assert final == set(after)


def test_one_table_an_access_switch_given_an_uplink_never_passes_what_both_block():
    """Access switch -> uplink 1, campus 10.20/16 -> + 10.40/16. A SYN from
    port 1 to 10.40.0.5:25 is blocked by both (Part 2 before: the port was
    campus-side; Part 1 after). The uplink's pass flow (an allow, 290) added
    before the Part 1 drop above it (300) would let it through."""
    from smtp_border.ordering import plan_one_table
    from smtp_border.single_table import compile_single_table

    old = parse_policy("campus: {prefixes: [10.20.0.0/16]}\nswitches: [{dpid: 1, access: true}]\n")
    new = parse_policy("campus: {prefixes: [10.20.0.0/16, 10.40.0.0/16]}\nswitches: [{dpid: 1, uplinks: [1]}]\n")
    packet = Packet(in_port=1, src=netaddr.IPAddress("192.0.2.1"), dst=netaddr.IPAddress("10.40.0.5"), dst_port=25)
    twin = Packet(in_port=1, src=netaddr.IPAddress("192.0.2.1"), dst=netaddr.IPAddress("10.40.0.5"), dst_port=2525)
    assert not is_allowed(old, 1, packet) and not is_allowed(new, 1, packet)
    assert is_allowed(old, 1, twin) and is_allowed(new, 1, twin)
    before = set(compile_single_table(old, 1, NOW))
    after = compile_single_table(new, 1, NOW)

    diff = diff_rules(before, after)
    allows_first = [[(ADD, r) for r in diff.add if not r.instructions.drops],
                    [(ADD, r) for r in diff.add if r.instructions.drops], [("delete", r) for r in diff.delete]]
    assert any(p == packet for _, p, _ in one_table_leaks(new, 1, before, allows_first, [packet, twin], 0))
    assert one_table_leaks(new, 1, before, plan_one_table(before, after), [packet, twin], 0) == []
