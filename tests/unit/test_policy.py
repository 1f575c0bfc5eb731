"""policy.yaml parsing and validation: every rejection names file, key and problem."""
import datetime
import re
import textwrap

import netaddr
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_border import policy as policy_core, reader as policy_module
from smtp_border.policy import Direction, PolicyError, load_policy, parse_policy

from conftest import ROOT
from strategies import examples

BASE = """
campus:
  prefixes: [10.20.0.0/16, "fd00:20::/48"]
gateways:
  - name: relay
    addresses: [10.20.0.25]
exceptions:
  - address: 10.20.1.5
    direction: inbound
    reason: dept mail
"""


def parse(text):
    return parse_policy(textwrap.dedent(text), source="policy.yaml")


def error_of(text):
    with pytest.raises(PolicyError) as caught:
        parse(text)
    return str(caught.value)


def test_shipped_policy_loads():
    policy = load_policy(ROOT / "policy.yaml")
    assert policy.smtp_ports == (25,)
    assert [s.dpid for s in policy.switches] == [1]
    assert policy.switches[0].uplinks == (1,)
    assert {e.direction for e in policy.exceptions} == {Direction.INBOUND, Direction.OUTBOUND}


def test_defaults_and_normalisation():
    policy = parse(BASE)
    assert policy.smtp_ports == (25,)
    assert policy.switches is None
    assert policy.exceptions[0].address == netaddr.IPNetwork("10.20.1.5/32")
    assert policy.exceptions[0].contact is None and policy.exceptions[0].expires is None
    assert policy.is_campus(netaddr.IPAddress("fd00:20::1"))
    assert not policy.is_campus(netaddr.IPAddress("10.21.0.1"))


def test_issue_example_message():
    text = BASE + """
  - {address: 10.20.1.6, direction: inbound, reason: a}
  - {address: 10.20.3.300, direction: inbound, reason: b}
"""
    assert error_of(text) == "policy.yaml: exceptions[2].address: '10.20.3.300' is not an IP address or network"


def test_load_policy_names_the_file(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("campus: {prefixes: [10.20.0.0/16]}\nsmtp_ports: [0]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}: smtp_ports[0]: 0 is not a TCP port (1-65535)"


def test_missing_file():
    with pytest.raises(PolicyError, match=r"^nowhere.yaml: cannot read policy file: No such file"):
        load_policy("nowhere.yaml")


def test_expires_parses_to_utc():
    policy = parse(BASE + "    expires: 2027-06-30T02:00:00+02:00\n")
    assert policy.exceptions[0].expires == datetime.datetime(2027, 6, 30, tzinfo=datetime.timezone.utc)
    policy = parse(BASE + "    expires: 2027-06-30\n")
    assert policy.exceptions[0].expires == datetime.datetime(2027, 6, 30, tzinfo=datetime.timezone.utc)
    policy = parse(BASE + '    expires: "2027-06-30T00:00:00Z"\n')
    assert policy.exceptions[0].expires.tzinfo == datetime.timezone.utc


def test_switch_dpid_forms():
    for form in ("1", "0x1", '"00:00:00:00:00:00:00:01"', '"0000000000000001"'):
        policy = parse(BASE + f"switches:\n  - {{dpid: {form}, uplinks: [1, 2]}}\n")
        assert policy.switches[0].dpid == 1
    assert parse(BASE + "switches: []\n").switches == ()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "policy.yaml: the file is empty; it needs at least campus.prefixes"),
        ("- a\n- b\n", "policy.yaml: top level: expected a mapping of keys, got a list"),
        ("campus: [\n", "policy.yaml: line 2, column 1: YAML syntax error: did not find expected node content"),
        ("gateways: []\n", "policy.yaml: campus: missing required key"),
        ("campus: {}\n", "policy.yaml: campus.prefixes: missing required key"),
        ("campus: {prefixes: []}\n", "policy.yaml: campus.prefixes: expected a non-empty list of IP addresses or networks"),
        ("campus: {prefixes: [10.20.0.1/16]}\n", "policy.yaml: campus.prefixes[0]: '10.20.0.1/16' has host bits set; as a network write 10.20.0.0/16"),
        ("campus: {prefixes: [10.20/16]}\n", "policy.yaml: campus.prefixes[0]: '10.20/16' is not an IP address or network"),
        ("campus: {prefixes: [10.20.0.0/33]}\n", "policy.yaml: campus.prefixes[0]: '10.20.0.0/33' is not an IP address or network"),
        ("campus: {prefixes: [10.0.0.0/8, 10.0.0.0/8]}\n", "policy.yaml: campus.prefixes[1]: 10.0.0.0/8 is listed twice"),
        ("campus: {prefixes: [12]}\n", "policy.yaml: campus.prefixes[0]: expected an IP address or network, got int 12"),
        ("campus: {prefixes: [10.0.0.0/8]}\ncampus: {prefixes: [10.0.0.0/8]}\n", "policy.yaml: line 2, column 1: YAML syntax error: duplicate key 'campus'"),
        ("campus: {prefixes: [10.0.0.0/8], prefix: 1}\n", "policy.yaml: campus.prefix: unknown key 'prefix'; did you mean 'prefixes'?"),
        ("campus: {prefixes: [10.0.0.0/8]}\nexception: []\n", "policy.yaml: exception: unknown key 'exception'; did you mean 'exceptions'?"),
        ("campus: {prefixes: [10.0.0.0/8]}\nsmtp_ports: [25, 25]\n", "policy.yaml: smtp_ports[1]: 25 is listed twice"),
        ("campus: {prefixes: [10.0.0.0/8]}\nsmtp_ports: [70000]\n", "policy.yaml: smtp_ports[0]: 70000 is not a TCP port (1-65535)"),
        ("campus: {prefixes: [10.0.0.0/8]}\nsmtp_ports: [smtp]\n", "policy.yaml: smtp_ports[0]: 'smtp' is not a TCP port"),
        ("campus: {prefixes: [10.0.0.0/8]}\nsmtp_ports: [true]\n", "policy.yaml: smtp_ports[0]: True is not a TCP port"),
        ("campus: {prefixes: [10.0.0.0/8]}\nsmtp_ports: 25\n", "policy.yaml: smtp_ports: expected a list, got int 25"),
        ("campus: {prefixes: [10.0.0.0/8]}\ngateways: [{name: r}]\n", "policy.yaml: gateways[0].addresses: missing required key"),
        ("campus: {prefixes: [10.0.0.0/8]}\ngateways: [{name: r, addresses: [192.0.2.1]}]\n", "policy.yaml: gateways[0].addresses[0]: 192.0.2.1/32 is not inside the campus prefixes (10.0.0.0/8)"),
        ("campus: {prefixes: [10.0.0.0/8]}\ngateways: [{name: r, addresses: [10.0.0.1]}, {name: r, addresses: [10.0.0.2]}]\n", "policy.yaml: gateways[1].name: 'r' is already used by gateways[0]"),
    ],
)
def test_rejections(text, expected):
    assert error_of(text) == expected


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("{address: 10.20.1.5, direction: inbound}", "exceptions[1].reason: missing required key"),
        ("{address: 10.20.1.5, reason: x}", "exceptions[1].direction: missing required key"),
        ("{address: 10.20.1.6, direction: inbond, reason: x}", "exceptions[1].direction: 'inbond' is not a direction; use one of inbound, outbound, both; did you mean 'inbound'?"),
        ("{address: 10.20.1.6, direction: out, reason: x}", "exceptions[1].direction: 'out' is not a direction; use one of inbound, outbound, both"),
        ("{address: 10.20.1.6, direction: both, reason: ''}", "exceptions[1].reason: expected non-empty text, got str ''"),
        ("{address: 10.20.1.6, direction: both, reason: x, contact: 5}", "exceptions[1].contact: expected non-empty text, got int 5"),
        ("{address: 10.20.1.6, direction: both, reason: x, expire: 2027-01-01}", "exceptions[1].expire: unknown key 'expire'; did you mean 'expires'?"),
        ("{address: 10.20.1.6, direction: both, reason: x, expires: soon}", "exceptions[1].expires: 'soon' is not a date or time (use ISO 8601, e.g. 2027-06-30T00:00:00Z)"),
        ("{address: 10.20.1.6, direction: both, reason: x, expires: 2027-13-01}", "exceptions[1].expires: '2027-13-01' is not a date or time (use ISO 8601, e.g. 2027-06-30T00:00:00Z)"),
        ("{address: 10.20.1.5, direction: outbound, reason: x}", "exceptions[1].address: 10.20.1.5/32 is already listed at exceptions[0] (give one entry with direction: both)"),
        ("{address: 10.99.0.0/16, direction: both, reason: x}", "exceptions[1].address: 10.99.0.0/16 is not inside the campus prefixes (10.20.0.0/16, fd00:20::/48)"),
        ("{address: 10.20.1.7/24, direction: both, reason: x}", "exceptions[1].address: '10.20.1.7/24' has host bits set; as a address write 10.20.1.0/24 or the host address 10.20.1.7"),
        ("{address: 'fd00:21::1', direction: both, reason: x}", "exceptions[1].address: fd00:21::1/128 is not inside the campus prefixes (10.20.0.0/16, fd00:20::/48)"),
        ("{address: '::ffff:10.20.1.9', direction: both, reason: x}", "exceptions[1].address: ::ffff:10.20.1.9/128 is not inside the campus prefixes (10.20.0.0/16, fd00:20::/48)"),
        ("10.20.1.9", "exceptions[1]: expected a mapping of keys, got str '10.20.1.9'"),
    ],
)
def test_exception_rejections(entry, expected):
    assert error_of(BASE + f"  - {entry}\n") == f"policy.yaml: {expected}"


@pytest.mark.parametrize(
    "switches, expected",
    [
        ("[{uplinks: [1]}]", "switches[0].dpid: missing required key"),
        ("[{dpid: 1}]", "switches[0].uplinks: missing required key (give [] to enforce by addresses alone, or access: true for an access switch)"),
        ("[{dpid: -1, uplinks: [1]}]", "switches[0].dpid: -1 is not a datapath id (0-18446744073709551615)"),
        ("[{dpid: zz, uplinks: [1]}]", "switches[0].dpid: 'zz' is not a datapath id (an integer, 0x hex, or 16 hex digits)"),
        ("[{dpid: 1, uplinks: [0]}]", "switches[0].uplinks[0]: 0 is not an OpenFlow port number (1-4294967039)"),
        ("[{dpid: 1, uplinks: [1, 1]}]", "switches[0].uplinks[1]: 1 is listed twice"),
        ("[{dpid: 1, uplinks: [1]}, {dpid: 0x1, uplinks: [2]}]", "switches[1].dpid: 1 is already used by switches[0]"),
        ("[{dpid: 1, uplinks: [1], uplink: 2}]", "switches[0].uplink: unknown key 'uplink'; did you mean 'uplinks'?"),
    ],
)
def test_switch_rejections(switches, expected):
    assert error_of(BASE + f"switches: {switches}\n") == f"policy.yaml: {expected}"


def test_error_is_one_line_and_has_parts():
    with pytest.raises(PolicyError) as caught:
        parse(BASE + "  - {address: 10.20.1.6, direction: sideways, reason: x}\n")
    err = caught.value
    assert "\n" not in str(err)
    assert (err.source, err.path) == ("policy.yaml", "exceptions[1].direction")


# -- the libyaml-backed loader reads policies exactly as the pure-Python one --

PURE = policy_module._strict_loader(yaml.SafeLoader)


def parse_with(loader, text):
    saved = policy_module._StrictLoader
    policy_module._StrictLoader = loader
    try:
        return parse_policy(text, source="policy.yaml")
    except PolicyError as err:
        return str(err)
    finally:
        policy_module._StrictLoader = saved


def documented_policies():
    """policy.yaml, every policy in the docs' YAML blocks, and the test campus's."""
    texts = {"policy.yaml": (ROOT / "policy.yaml").read_text()}
    for page in sorted((ROOT / "docs").glob("*.md")):
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)):
            texts[f"{page.name} block {n}"] = block
    return texts


def test_the_loader_is_libyamls():
    assert issubclass(policy_module._StrictLoader, yaml.CSafeLoader)


@pytest.mark.parametrize("name", sorted(documented_policies()))
def test_every_shipped_and_documented_policy_reads_as_with_the_pure_python_loader(name):
    text = documented_policies()[name]
    fast, pure = parse_with(policy_module._StrictLoader, text), parse_with(PURE, text)
    assert fast == pure
    if name == "policy.yaml":
        assert isinstance(fast, policy_module.Policy)


@pytest.mark.parametrize("text", [
    "campus: {prefixes: [10.0.0.0/8]}\ncampus: {prefixes: [10.0.0.0/8]}\n",
    "campus:\n  prefixes: [10.0.0.0/8]\nexceptions:\n  - {address: 10.0.0.1, direction: both, reason: a, reason: b}\n",
    "campus:\n  prefixes: [10.0.0.0/8]\n  prefixes: [10.1.0.0/16]\n",
    "campus: {prefixes: [10.0.0.0/8]}\n1: a\n0x1: b\n",
])
def test_duplicate_keys_are_refused_at_their_line_by_both_loaders(text):
    fast, pure = parse_with(policy_module._StrictLoader, text), parse_with(PURE, text)
    assert fast == pure
    assert re.match(r"policy.yaml: line \d+, column \d+: YAML syntax error: duplicate key", fast), fast


def test_syntax_errors_name_the_same_line_and_column_with_both_loaders():
    for text in ("campus: [\n", "campus:\n  prefixes: [10.0.0.0/8\n", "a: b: c\n", "campus: {prefixes: [10.0.0.0/8]}\n  bad indent: 1\n"):
        fast, pure = parse_with(policy_module._StrictLoader, text), parse_with(PURE, text)
        assert fast.split(": YAML syntax error")[0] == pure.split(": YAML syntax error")[0], (text, fast, pure)
        assert "line" in fast


def test_a_large_policy_reads_as_with_the_pure_python_loader():
    entries = "".join(f"  - {{address: 10.{i // 250}.{i % 250}.1, direction: {('inbound', 'outbound', 'both')[i % 3]},"
                      f" reason: 'r {i}', expires: 2031-0{1 + i % 9}-01}}\n" for i in range(2000))
    text = "campus: {prefixes: [10.0.0.0/8]}\nexceptions:\n" + entries
    assert parse_with(policy_module._StrictLoader, text) == parse_with(PURE, text)


@settings(max_examples=examples(500), deadline=None)
@given(st.one_of(
    st.from_regex(r"\A[-+0-9a-fA-FxXoObB_:.eEtTzZ ]{0,24}\Z"),
    st.ip_addresses().map(str),
    st.sampled_from(["1.2.3", "1.0", ".inf", "-.Inf", ".nan", "2001-12-14t21:59:43.10-05:00", "190:20:30.15", "1_000.5",
                     "10.20.0.0/16", "yes", "~", "null", "0x1f", "0o17", "..."]),
))
def test_resolving_scalars_agrees_with_pyyaml(value):
    """The loader's shortcuts for plain scalars (two dots: text; the cache)
    give every value the tag PyYAML's own resolver gives it."""
    ours = policy_module._StrictLoader("")
    stock = yaml.SafeLoader("")
    for implicit in ((True, False), (False, True)):
        for _ in range(2):  # the second time from the cache
            assert ours.resolve(yaml.ScalarNode, value, implicit) == stock.resolve(yaml.ScalarNode, value, implicit)


# -- what one read remembers for the next cannot go stale -------------------------

def fresh_parse(text):
    """parse_policy with nothing remembered from earlier reads."""
    policy_module._remembered_before, policy_module._remembered_now = {}, {}
    policy_module._inside = ((), set())
    try:
        return parse_policy(text, source="policy.yaml")
    except PolicyError as err:
        return str(err)


def remembering_parse(text):
    try:
        return parse_policy(text, source="policy.yaml")
    except PolicyError as err:
        return str(err)


REMEMBERED = """
campus: {prefixes: [10.20.0.0/16, "fd00:20::/48"]}
exceptions:
  - {address: 10.20.1.5, direction: inbound, reason: dept, contact: a@example.edu, expires: 2031-01-01T00:00:00Z}
  - {address: "fd00:20::5", direction: both, reason: lab}
"""


@pytest.mark.parametrize("edited", [
    REMEMBERED,  # unchanged
    REMEMBERED.replace("direction: inbound", "direction: both"),
    REMEMBERED.replace("reason: dept", "reason: physics"),
    REMEMBERED.replace("contact: a@example.edu", "contact: b@example.edu"),
    REMEMBERED.replace("2031-01-01T00:00:00Z", "2032-01-01T00:00:00Z"),
    REMEMBERED.replace("2031-01-01T00:00:00Z", "'2031-01-01T00:00:00Z'"),  # text, not a YAML timestamp
    REMEMBERED.replace("10.20.1.5", "10.20.1.6"),
    REMEMBERED.replace("10.20.1.5", "10.20.1.5/33"),  # now invalid
    REMEMBERED.replace("reason: dept", "reason: 5"),  # now invalid: not text
    REMEMBERED.replace("10.20.0.0/16", "10.30.0.0/16"),  # the same entry is no longer inside the campus
    REMEMBERED.replace('"fd00:20::5", direction: both', '10.20.1.5, direction: both'),  # now a duplicate
    REMEMBERED.replace("direction: inbound", "direction: 1").replace("reason: lab", "reason: true"),
])
def test_a_read_after_another_is_what_a_fresh_read_makes(edited):
    """Each read reuses what the previous one made of identical entries,
    and the campus prefixes' verdicts while they are the same: edit any
    field, or the prefixes, and the result is a fresh read's."""
    for before in (REMEMBERED, edited):
        remembering_parse(before)
        assert remembering_parse(edited) == fresh_parse(edited)
        remembering_parse(before)
        assert remembering_parse(edited) == fresh_parse(edited)


def test_the_collector_pause_holds_until_the_last_user_and_restores_what_was():
    import gc

    a, b = policy_core.cyclic_gc_paused(), policy_core.cyclic_gc_paused()
    try:
        gc.enable()
        a.__enter__()
        b.__enter__()  # a second user, as a green thread would start one
        a.__exit__(None, None, None)  # the first ends before the second
        assert not gc.isenabled()
        b.__exit__(None, None, None)
        assert gc.isenabled()
        gc.disable()  # off already: it stays off
        with policy_core.cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
