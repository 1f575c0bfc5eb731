"""Part 2 grants as the policy text defines them: granted "for the following
reason(s) ... Message size limit", and only "until this changes". The relay's
limit (gateways[].max_message_size), the grounds a grant states, which
grounds the API accepts (part2_grounds), and what a reload does with grants
the relay now carries (report for review, or lapse)."""
import textwrap

import netaddr
import pytest

from smtp_border.border import Border
from smtp_border.compiler import compile_switch
from smtp_border.policy import PolicyError, format_size, parse_policy, parse_size
from smtp_border.semantics import Packet, is_allowed
from smtp_border.store import PolicyStore

POLICY = """
campus: {prefixes: [10.20.0.0/16]}
gateways: [{name: relay, addresses: [10.20.0.25], max_message_size: %s}]
part2_relay_suffices: %s
exceptions:
  - {address: 10.20.2.50, direction: outbound, grounds: message-size, needs_message_size: 200MB, reason: imaging}
  - {address: 10.20.2.60, direction: both, grounds: message-size, needs_message_size: 100MB, reason: lab server}
  - {address: 10.20.1.5, direction: inbound, reason: dept mail system}
switches: [{dpid: 1, uplinks: [1]}]
"""
BIG = {"address": "10.20.3.10", "direction": "outbound", "reason": "sends CT scans",
       "grounds": "message-size", "needs_message_size": "300MB"}


def write(tmp_path, limit="50MB", mode="report", text=POLICY):
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(text % (limit, mode)))
    return tmp_path / "policy.yaml"


def sends(policy, src, now=None):
    """May campus host `src` open SMTP to the outside (Part 2), on switch 1?"""
    return is_allowed(policy, 1, Packet(in_port=2, src=netaddr.IPAddress(src), dst=netaddr.IPAddress("192.0.2.25"),
                                        dst_port=25), now)


def receives(policy, dst):
    return is_allowed(policy, 1, Packet(in_port=1, src=netaddr.IPAddress("192.0.2.25"), dst=netaddr.IPAddress(dst),
                                        dst_port=25))


@pytest.mark.parametrize("text,size", [("50MB", 50_000_000), ("50 MiB", 52_428_800), (52428800, 52_428_800),
                                       ("1gb", 10**9), ("100KB", 100_000), ("7", 7)])
def test_sizes_read_and_spell_back(text, size):
    assert parse_size(text) == size and parse_size(format_size(size)) == size


@pytest.mark.parametrize("entry,where,says", [
    ("{address: 10.20.2.1, direction: outbound, grounds: message_size, needs_message_size: 1GB, reason: r}",
     "exceptions[0].grounds", "did you mean 'message-size'"),
    ("{address: 10.20.2.1, direction: inbound, grounds: message-size, needs_message_size: 1GB, reason: r}",
     "exceptions[0].grounds", "an inbound exception is a registered independent mail system"),
    ("{address: 10.20.2.1, direction: outbound, grounds: message-size, reason: r}",
     "exceptions[0].needs_message_size", "required with grounds: message-size"),
    ("{address: 10.20.2.1, direction: outbound, needs_message_size: 1GB, reason: r}",
     "exceptions[0].needs_message_size", "goes with grounds: message-size"),
    ("{address: 10.20.2.1, direction: outbound, grounds: message-size, needs_message_size: 1.5GB, reason: r}",
     "exceptions[0].needs_message_size", "'1.5GB' is not a size"),
])
def test_bad_grounds_name_the_key_and_the_fix(entry, where, says):
    with pytest.raises(PolicyError) as err:
        parse_policy(f"campus: {{prefixes: [10.20.0.0/16]}}\nexceptions:\n  - {entry}\n", source="p.yaml")
    assert err.value.path == where and says in err.value.problem


@pytest.mark.parametrize("top,where,says", [
    ("part2_grounds: [size-limit]", "part2_grounds[0]", "is not a ground the policy grants Part 2 exceptions for"),
    ("part2_grounds: message-size", "part2_grounds", "expected a list of grounds"),
    ("part2_relay_suffices: delete", "part2_relay_suffices", "use report or lapse"),
    ("gateways: [{name: r, addresses: [10.20.0.25], max_message_size: big}]", "gateways[0].max_message_size",
     "'big' is not a size"),
])
def test_bad_part2_settings_name_the_key(top, where, says):
    with pytest.raises(PolicyError) as err:
        parse_policy(f"campus: {{prefixes: [10.20.0.0/16]}}\n{top}\n", source="p.yaml")
    assert err.value.path == where and says in err.value.problem


def test_file_entries_without_grounds_still_load_with_a_warning():
    policy = parse_policy(textwrap.dedent("""
        campus: {prefixes: [10.20.0.0/16]}
        exceptions:
          - {address: 10.20.1.5, direction: inbound, reason: dept}
          - {address: 10.20.2.50, direction: outbound, reason: from an old file}
          - {address: 10.20.2.51, direction: both, grounds: message-size, needs_message_size: 60MB, reason: r}
    """), source="p.yaml")
    assert sends(policy, "10.20.2.50")  # in force, as before grounds existed
    assert policy.warnings() == (
        "p.yaml: exceptions[1] (10.20.2.50/32): a Part 2 exception without grounds; the policy grants them only for:"
        " Message size limit (add grounds: message-size and needs_message_size)",)


def test_an_api_grant_must_state_accepted_grounds_and_a_need_the_relay_does_not_meet(tmp_path):
    store = PolicyStore(write(tmp_path))
    before = store.policy
    without = {k: v for k, v in BIG.items() if k not in ("grounds", "needs_message_size")}
    with pytest.raises(PolicyError) as err:
        store.propose_add(without)
    assert err.value.path == "grounds"
    assert "accepts grounds: message-size" in err.value.problem
    assert "ITS will grant exceptions to Part 2 for the following reason(s)" in err.value.problem
    with pytest.raises(PolicyError) as err:
        store.propose_add(dict(BIG, needs_message_size="40MB"))
    assert err.value.path == "needs_message_size"
    assert err.value.problem.startswith("40MB is within the relay's limit (50MB, gateways[].max_message_size in")
    with pytest.raises(PolicyError) as err:  # in a batch, the item is named
        store.propose_batch([dict(BIG, address="10.20.3.11"), without], [])
    assert err.value.path == "add[1].grounds"
    assert store.policy is before  # nothing changed
    # The allowed twins: with grounds; and an inbound grant needs none.
    store.commit(store.propose_add(BIG))
    store.commit(store.propose_add({"address": "10.20.3.20", "direction": "inbound", "reason": "dept"}))
    assert sends(store.policy, "10.20.3.10") and receives(store.policy, "10.20.3.20")


def test_a_file_may_accept_no_grounds_over_the_api(tmp_path):
    policy = write(tmp_path, text=POLICY.replace("part2_relay_suffices: %s", "part2_relay_suffices: %s\npart2_grounds: []"))
    with pytest.raises(PolicyError) as err:
        PolicyStore(policy).propose_add(BIG)
    assert "accepts none over the API (part2_grounds is empty): grant it in the file" in err.value.problem


def test_raising_the_relays_limit_reports_grants_it_now_carries(tmp_path):
    border = Border(write(tmp_path))
    border.add(BIG)
    assert border.policy.for_review() == ()
    write(tmp_path, limit="250MB")
    border.reload()
    review = {str(e.address): why for e, why in border.policy.for_review()}
    assert review == {
        "10.20.2.50/32": "the relay now carries messages up to 250MB; this grant needs 200MB",
        "10.20.2.60/32": "the relay now carries messages up to 250MB; this grant needs 100MB",
    }  # 10.20.3.10 needs 300MB: still needed
    # Reported, still in force.
    assert all(sends(border.policy, a) for a in ("10.20.2.50", "10.20.2.60", "10.20.3.10"))


def test_with_lapse_outbound_grants_the_relay_carries_are_withdrawn_and_return_if_it_shrinks(tmp_path):
    border = Border(write(tmp_path, mode="lapse"))
    border.add(dict(BIG, needs_message_size="100MB"))
    before = set(border.flows(1))
    write(tmp_path, limit="250MB", mode="lapse")
    outcome = border.reload()
    policy = border.policy
    assert not sends(policy, "10.20.2.50") and not sends(policy, "10.20.3.10")  # lapsed: blocked again
    assert not sends(policy, "10.20.2.99") and sends(policy, "10.20.0.25")  # twins: an ordinary host, the relay
    # A `both` grant keeps its Part 1 half: it is reported, not lapsed.
    assert sends(policy, "10.20.2.60") and receives(policy, "10.20.2.60")
    lapsed = sorted(str(e.address) for e, _ in policy.for_review() if e.lapsed)
    assert lapsed == ["10.20.2.50/32", "10.20.3.10/32"]
    assert border.flows(1) == compile_switch(policy, 1)
    assert (before - set(outcome.diffs[1].delete)) | set(outcome.diffs[1].add) == set(border.flows(1))
    # The API grant is kept (not deleted) and saved without the lapse: a restart judges it again.
    restarted = PolicyStore(tmp_path / "policy.yaml")
    assert [e.lapsed for e in restarted.api_exceptions] == [True]
    assert "lapsed" not in (tmp_path / "policy.api-exceptions.json").read_text()
    write(tmp_path, limit="50MB", mode="lapse")
    border.reload()
    assert sends(border.policy, "10.20.2.50") and sends(border.policy, "10.20.3.10")
    assert border.policy.for_review() == ()
