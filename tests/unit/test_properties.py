"""Property-based: for random policies (prefixes, gateways, exceptions of every
direction and expiry, IPv4 and IPv6, uplinks or none) and random packets, the
compiled flows, evaluated by OpenFlow's matching rules, decide exactly as the
policy's reference semantics."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_border.compiler import compile_switch
from smtp_border.diff import diff_rules
from smtp_border.semantics import is_allowed

from flowsim import forwards
from strategies import NOW, packets, policies, switch_of, examples

SETTINGS = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data(), policy=policies())
def test_compiled_flows_decide_as_the_reference(data, policy):
    dpid = data.draw(switch_of(policy))
    rules = compile_switch(policy, dpid, NOW)
    for packet in data.draw(st.lists(packets(policy, dpid), min_size=1, max_size=60)):
        assert forwards(rules, packet) == is_allowed(policy, dpid, packet, NOW), packet


@SETTINGS
@given(policy=policies(), dpid=st.integers(1, 4))
def test_compiled_flows_are_well_formed(policy, dpid):
    rules = compile_switch(policy, dpid, NOW)
    assert len({r.key for r in rules}) == len(rules)
    # The flows of one exception and one direction at most: merged networks never widen.
    exception_flows = [r for r in rules if r.priority == 200 and r.table == 1]
    active = [e for e in policy.exceptions if e.is_active(NOW)]
    assert len(exception_flows) <= sum(1 + (e.direction.value == "both") for e in active)


@SETTINGS
@given(old=policies(), new=policies(), dpid=st.integers(1, 4))
def test_applying_a_diff_gives_exactly_the_new_rules(old, new, dpid):
    before, after = compile_switch(old, dpid, NOW), compile_switch(new, dpid, NOW)
    diff = diff_rules(before, after)
    table = {r.key: r for r in before}
    for rule in diff.add:
        table[rule.key] = rule
    for rule in diff.delete:
        del table[rule.key]
    assert frozenset(table.values()) == after


@SETTINGS
@given(data=st.data(), policy=policies())
def test_incremental_exception_changes_equal_a_full_compile(data, policy):
    """What a REST change sends (the exception index, rendered for the
    switch's profile) leaves a switch exactly where a full compilation of the
    new policy would; and reverting a change restores the index exactly."""
    import dataclasses

    from smtp_border.compiler import ExceptionIndex
    from smtp_border.pipeline import MULTI_TABLE, SINGLE, Profile
    from smtp_border.policy import Direction, MailException

    from strategies import networks_in

    dpid = data.draw(switch_of(policy))
    profile = data.draw(st.sampled_from([MULTI_TABLE, Profile.named(SINGLE), Profile.named(SINGLE, table=60, meters=False)]))
    index = ExceptionIndex(policy, NOW)
    rules = set(profile.compile(policy, dpid, NOW))
    spec = policy.switch_spec(dpid)
    enforcing = spec is not None

    def render(change):
        return change.render(lambda network, inbound: profile.exception_rule(network, inbound, spec.by_port))
    for _ in range(data.draw(st.integers(1, 6))):
        current = list(policy.exceptions)
        if current and data.draw(st.booleans()):
            gone = data.draw(st.sampled_from(current))
            policy = dataclasses.replace(policy, exceptions=tuple(e for e in current if e is not gone))
            diff = index.update(removed=[gone])
        else:
            address = data.draw(st.sampled_from(policy.campus).flatmap(networks_in))
            if any(e.address == address for e in current):
                continue
            new = MailException(address=address, direction=data.draw(st.sampled_from(list(Direction))), reason="api")
            policy = dataclasses.replace(policy, exceptions=tuple(current) + (new,))
            if data.draw(st.booleans()):  # refused (over budget, say): reverted, nothing changes
                before = {k: set(m.blocks) for k, m in index.merged.items()}, set(index.members)
                index.revert(index.update(added=[new]))
                assert ({k: set(m.blocks) for k, m in index.merged.items()}, set(index.members)) == before
            diff = index.update(added=[new])
        if enforcing:
            diff = render(diff)
            rules = (rules - set(diff.delete)) | set(diff.add)
        assert frozenset(rules) == profile.compile(policy, dpid, NOW)
