"""Pipeline profiles (smtp_border/pipeline.py): the choice each switch family
gets from its table features (read from bytes, as the app reads them), the
operator's explicit choice, budgets, and every profile's flows held to its
declared tables."""
import dataclasses
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ryu_apps.openflow import TableFeaturesBody, table_features
from smtp_border.pipeline import (
    MULTI, MULTI_TABLE, SINGLE, Capabilities, OverBudget, Profile, choose, entries,
)
from smtp_border.policy import SwitchSpec, parse_policy
from smtp_border.rules import ETH_TYPE_IPV6

import switchshapes
from strategies import NOW, policies, switch_of, examples

SETTINGS = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def probed(shape, max_meters=200_000, n_tables=None, **kwargs):
    """Capabilities as the app builds them: the shape's bytes through its reader."""
    stats = switchshapes.SHAPES[shape](**kwargs)
    body = TableFeaturesBody(b"".join(bytes(s.serialize()) for s in stats))
    tables = table_features([body])
    return Capabilities(n_tables or len(tables), tables, max_meters)


SPEC = SwitchSpec(dpid=1, uplinks=(1,))


def test_the_bytes_reader_agrees_with_ryus_parser():
    body = TableFeaturesBody(b"".join(bytes(s.serialize()) for s in switchshapes.of_dpa()))
    mine = {t.table_id: t for t in table_features([body])}
    for stats in body:  # Ryu's own objects, parsed from the same bytes
        assert mine[stats.table_id].max_entries == stats.max_entries
        assert mine[stats.table_id].name == stats.name.decode().rstrip("\0")
    assert mine[60].matches >= {"in_port", "eth_type", "ip_proto", "tcp_dst", "ipv4_src", "ipv6_dst"}
    assert mine[0].instructions == {"goto_table"} and mine[0].next_tables == {10}


def test_open_vswitch_gets_three_tables_with_meters_and_ip_frag():
    choice = choose(SPEC, probed("open_vswitch", flow_limit=5000))
    assert choice.profile == MULTI_TABLE and not choice.explicit
    assert (choice.budget, choice.budget_source) == (1_000_000, "table features")  # table 1 holds the exceptions


def test_aruba_without_write_metadata_gets_one_table_in_its_policy_engine():
    choice = choose(SPEC, probed("aruba_3810"))
    assert choice.profile == Profile.named(SINGLE, table=100, meters=True, frag_match=False)
    assert "write_metadata" in choice.reasons[0] and "table 1" in choice.reasons[0]
    assert choice.budget == 2047


def test_dell_os9_one_table_no_meters():
    choice = choose(SPEC, probed("dell_os9", max_meters=0))
    assert choice.profile == Profile.named(SINGLE, table=0, meters=False, frag_match=False)
    assert any("unsampled" in r for r in choice.reasons) and choice.budget == 1000


def test_of_dpa_uses_its_fixed_acl_table():
    choice = choose(SPEC, probed("of_dpa"))
    assert choice.profile.name == SINGLE and choice.profile.table == 60 and choice.budget == 3072


def test_the_operators_choice_wins_and_a_table_id_is_honoured():
    assert choose(dataclasses.replace(SPEC, pipeline=MULTI), probed("dell_os9")).profile.name == MULTI
    forced = choose(dataclasses.replace(SPEC, pipeline=SINGLE, table=60), probed("open_vswitch"))
    assert forced.explicit and forced.profile == Profile.named(SINGLE, table=60)
    # auto with a table named: single_table goes there
    assert choose(dataclasses.replace(SPEC, table=60), probed("of_dpa")).profile.table == 60
    # the policy's meters: false and table_size override what the switch says
    spec = dataclasses.replace(SPEC, meters=False, table_size=300, ipv6_entry_cost=2)
    choice = choose(spec, probed("open_vswitch"))
    assert not choice.profile.meters and (choice.budget, choice.budget_source, choice.ipv6_entry_cost) == (
        300, "policy", 2)


def test_a_switch_without_table_features_is_judged_by_its_table_count():
    assert choose(SPEC, Capabilities(n_tables=1)).profile == Profile.named(SINGLE)
    assert choose(SPEC, Capabilities(n_tables=254)).profile == MULTI_TABLE
    assert choose(SPEC, None).profile == MULTI_TABLE  # not probed yet: today's pipeline


def test_policy_keys_are_checked_with_the_fix_named():
    base = "campus: {prefixes: [10.20.0.0/16]}\nswitches:\n  - {dpid: 1, uplinks: [1], %s}\n"
    spec = parse_policy(base % "pipeline: single_table, table: 60, table_size: 2000, ipv6_entry_cost: 2").switches[0]
    assert (spec.pipeline, spec.table, spec.table_size, spec.ipv6_entry_cost) == (SINGLE, 60, 2000, 2)
    for bad, words in [("pipeline: single", "did you mean 'single_table'"),
                       ("pipeline: multi_table, table: 60", "a table id is for single_table"),
                       ("table: 255", "a table id"), ("table_size: 0", "a number of table entries"),
                       ("meters: no-thanks", "not true or false")]:
        with pytest.raises(Exception) as err:
            parse_policy(base % bad)
        assert "switches[0]." in str(err.value) and words in str(err.value), str(err.value)


@SETTINGS
@given(data=st.data(), policy=policies())
def test_every_profile_compiles_only_what_its_tables_declare(data, policy):
    dpid = data.draw(switch_of(policy))
    for profile in (MULTI_TABLE, Profile.named(SINGLE), Profile.named(SINGLE, table=60, meters=False, frag_match=False),
                    Profile.named(MULTI, meters=False, frag_match=False)):
        rules = profile.compile(policy, dpid, NOW)
        profile.check(rules)
        assert {r.table for r in rules} <= set(profile.table_ids)
        if not profile.meters:
            assert not any(r.instructions.sample_meter for r in rules)
        if not profile.frag_match:
            assert not any(r.match.ip_frag for r in rules)


def test_check_refuses_flows_a_profile_does_not_declare():
    policy = parse_policy("campus: {prefixes: [10.20.0.0/16]}\nswitches: [{dpid: 1, uplinks: [1]}]\n")
    with pytest.raises(ValueError, match="undeclared table|does not"):
        Profile.named(SINGLE).check(MULTI_TABLE.compile(policy, 1, NOW))


def test_entries_count_ipv6_as_the_switch_does():
    policy = parse_policy(textwrap.dedent("""
        campus: {prefixes: [10.20.0.0/16, 2001:db8::/32]}
        switches: [{dpid: 1, uplinks: [1]}]
        exceptions: [{address: 2001:db8::25, direction: both, reason: r}]
    """))
    rules = Profile.named(SINGLE).compile(policy, 1, NOW)
    v6 = sum(r.match.eth_type == ETH_TYPE_IPV6 for r in rules)
    assert entries(rules, 0, 2) == len(rules) + v6 and entries(rules, 0) == len(rules)
    assert entries(rules, 1) == 0


def test_over_budget_names_the_switch_and_the_numbers():
    err = OverBudget(1, "border-1", 0, 130, 100, "table features")
    assert "0000000000000001 (border-1)" in str(err) and "130" in str(err) and "100" in str(err)
    assert err.to_dict()["available"] == 100
