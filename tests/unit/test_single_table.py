"""The single_table profile's compiler (smtp_border/single_table.py): one
table, no metadata, no goto, deciding every packet as the reference
semantics, as the three-table pipeline does."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_border.compiler import compile_switch
from smtp_border.policy import load_policy
from smtp_border.rules import Clause
from smtp_border.semantics import is_allowed
from smtp_border.single_table import compile_single_table

from conftest import ROOT
from flowsim import forwards, outcomes
from strategies import NOW, packets, policies, switch_of, examples

SETTINGS = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data(), policy=policies(), table=st.sampled_from([0, 60]))
def test_one_table_decides_as_the_reference_and_as_three(data, policy, table):
    dpid = data.draw(switch_of(policy))
    single = compile_single_table(policy, dpid, NOW, table=table)
    multi = compile_switch(policy, dpid, NOW)
    for packet in data.draw(st.lists(packets(policy, dpid), min_size=1, max_size=60)):
        # outcomes() also catches two flows of one priority that disagree.
        assert outcomes(single, packet, start=table) == {is_allowed(policy, dpid, packet, NOW)}, packet
        assert forwards(single, packet, start=table) == forwards(multi, packet)


@SETTINGS
@given(policy=policies(), dpid=st.integers(1, 4), table=st.sampled_from([0, 60]))
def test_one_table_and_nothing_a_simple_switch_lacks(policy, dpid, table):
    rules = compile_single_table(policy, dpid, NOW, table=table)
    assert {r.table for r in rules} == {table}
    assert len({r.key for r in rules}) == len(rules)
    for rule in rules:
        assert rule.match.metadata is None
        ins = rule.instructions
        assert ins.goto_table is None and ins.write_metadata is None
        assert ins.output_normal or ins.drops
    if not policy.audit.sample_rate:
        assert all(r.instructions.sample_meter is None for r in rules)


def test_the_shipped_policy_in_one_table():
    policy = load_policy(ROOT / "policy.yaml")
    rules = compile_single_table(policy, 1, NOW)
    # 8 unclassifiable, 4 allows to and 4 from gateways and exceptions, 2 Part 1 drops on the uplink, the
    # uplink's pass, 2 campus-to-campus, 2 Part 2 drops, the table-miss flow; three tables need 29.
    assert len(rules) == 24 < len(compile_switch(policy, 1, NOW))
    blocks = [r for r in rules if r.clause in (Clause.PART1_BLOCK, Clause.PART2_BLOCK)]
    assert {(r.clause, r.instructions.sample_meter) for r in blocks} == {(Clause.PART1_BLOCK, 1), (Clause.PART2_BLOCK, 2)}
    assert len(compile_single_table(policy, 9, NOW)) == 1  # an inside switch: forward everything


@pytest.mark.parametrize("count", [10, 1000])
def test_an_exception_costs_one_flow_per_direction_whatever_the_ports_and_uplinks(count, tmp_path):
    entries = "".join(f"  - {{address: 10.20.{i // 250}.{i % 250 + 1}, direction: inbound, reason: r}}\n"
                      for i in range(0, 2 * count, 2))
    text = ("campus: {prefixes: [10.20.0.0/16]}\nsmtp_ports: [25, 465, 587]\n"
            "switches: [{dpid: 1, uplinks: [1, 2, 3, 4]}]\nexceptions:\n" + entries)
    (tmp_path / "policy.yaml").write_text(text)
    policy = load_policy(tmp_path / "policy.yaml")
    rules = compile_single_table(policy, 1, NOW)
    inbound = [r for r in rules if r.clause == Clause.EXCEPTION_INBOUND]
    assert len(inbound) == count
    # uplinks x ports x campus prefixes for Part 1, one pass per uplink: the product stays small.
    assert len([r for r in rules if r.clause == Clause.PART1_BLOCK]) == 4 * 3 * 1
