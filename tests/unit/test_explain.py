"""`smtp-border explain` / GET /explain (issue 24): the helpdesk's question,
answered from the policy and from each switch's flows. Its answers must
agree with smtp_border/semantics.py (the policy read as text) and with the
flows the switch holds (their counters read from it), in both families."""
import datetime
import itertools
import json

import netaddr
import pytest
from webob import Request

from appkit import connect, make_app_fixture
from ryu_apps import rest, web
from smtp_border.compiler import compile_switch
from smtp_border.explain import CAMPUS_SIDE_PORT, explain, parse_question
from smtp_border.flowsim import forwards
from smtp_border.policy import load_policy
from smtp_border.semantics import Packet, is_allowed

from conftest import ROOT

make_app = pytest.fixture(make_app_fixture)
NOW = datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc)
ADDRESSES = {
    4: ["10.20.3.10", "10.20.1.5", "10.20.2.50", "10.20.0.25", "198.51.100.7", "203.0.113.9"],
    6: ["fd00:20:0:3::10", "fd00:20:0:1::5", "fd00:20:0:2::50", "fd00:20::25", "2001:db8:1::7", "2001:db8:2::9"],
}


@pytest.mark.parametrize("family", [4, 6])
def test_the_answer_agrees_with_the_policy_text_and_the_compiled_flows(family):
    """Every pair of campus hosts, exception hosts, the relay and outside
    hosts, on the SMTP port and another: explain's verdict is the policy's
    (semantics.py) and what the compiled flows do (flowsim), switch by switch."""
    policy = load_policy(ROOT / "policy.yaml")

    class Target:  # what Border.target gives, for the core alone
        flows = compile_switch(policy, 1, NOW)
        from smtp_border.pipeline import MULTI_TABLE as profile
        listing = None

    for src, dst in itertools.permutations(ADDRESSES[family], 2):
        src, dst = netaddr.IPAddress(src), netaddr.IPAddress(dst)
        for port in (25, 80):
            answer = explain(policy, {1: Target}, src, dst, port, now=NOW)
            (switch,) = answer["switches"]
            in_port = 1 if not policy.is_campus(src) else CAMPUS_SIDE_PORT
            packet = Packet(in_port=in_port, src=src, dst=dst, dst_port=port)
            meant = is_allowed(policy, 1, packet, NOW)
            assert answer["allowed"] == meant == switch["allowed"] == forwards(Target.flows, packet), (src, dst, port)
            assert switch["agrees_with_policy"] and switch["deciding_flow"]["ofctl"] in switch["flows"]


def test_the_answer_names_what_allows_or_blocks(make_app):
    app = make_app()
    policy = app.policy
    q = lambda s, d, p=25: explain(policy, {}, netaddr.IPAddress(s), netaddr.IPAddress(d), p, now=NOW)  # noqa: E731
    blocked = q("10.20.3.10", "198.51.100.7")
    assert (blocked["part"], blocked["allowed"]) == ("part2", False)
    assert "Part 2: campus hosts may not connect to TCP/25 outside" in blocked["why"] and "smtp-relay" in blocked["why"]
    granted = q("10.20.2.50", "198.51.100.7")
    assert granted["allowed"] and granted["by"]["exception"]["address"] == "10.20.2.50/32"
    assert q("10.20.0.25", "198.51.100.7")["by"] == {"gateway": "smtp-relay"}
    assert q("198.51.100.7", "10.20.1.5")["part"] == "part1" and q("198.51.100.7", "10.20.1.5")["allowed"]
    assert q("10.20.3.10", "198.51.100.7", 80)["part"] is None
    # An exception past its time is named, with why it no longer allows it.
    later = explain(policy, {}, netaddr.IPAddress("10.20.2.50"), netaddr.IPAddress("198.51.100.7"), 25,
                    now=datetime.datetime(2031, 1, 1, tzinfo=datetime.timezone.utc))
    assert not later["allowed"] and later["inactive_exception"]["address"] == "10.20.2.50/32"
    assert "it expired at 2030-06-30T00:00:00Z" in later["why"]


@pytest.fixture
def api(make_app):
    app = make_app()
    switch = connect(app)
    application = web.Application(rest.SmtpRestController(app))

    def get(query):
        req = Request.blank(f"{rest.PREFIX}/explain?{query}", remote_addr="127.0.0.1")
        response = req.get_response(application)
        return response.status_int, json.loads(response.body)

    get.switch = switch
    return get


def test_each_switch_names_its_deciding_flow_with_the_counter_it_reads_from_the_switch(api):
    """Through the API, against the (fake) switch: the deciding flow's packet
    counter is the switch's, in both families; the blocked one has its twin."""
    api.switch.count(lambda cookie: True, 0)
    for src, dst, allowed in (("10.20.3.10", "198.51.100.7", False), ("10.20.2.50", "198.51.100.7", True),
                              ("fd00:20:0:3::10", "2001:db8:1::7", False), ("fd00:20:0:2::50", "2001:db8:1::7", True)):
        status, answer = api(f"src={src}&dst={dst}")
        assert status == 200 and answer["allowed"] is allowed
        (switch,) = answer["switches"]
        assert switch["connected"] and switch["allowed"] is allowed and switch["agrees_with_policy"]
        cookie = int(switch["deciding_flow"]["cookie"], 16)
        before = switch["packets"]
        api.switch.count(lambda c: c == cookie, 7)  # seven packets hit that flow on the switch
        assert api(f"src={src}&dst={dst}")[1]["switches"][0]["packets"] == before + 7


@pytest.mark.parametrize("query, field", [
    ("src=10.20.3.10", "dst"), ("src=10.20.3.300&dst=198.51.100.7", "src"),
    ("src=10.20.3.10&dst=2001:db8::1", "dst"), ("src=10.20.3.10&dst=198.51.100.7&port=70000", "port"),
    ("src=10.20.3.10&dst=198.51.100.7&port=" + "9" * 5000, "port"),
])
def test_a_question_that_does_not_parse_is_a_400_naming_the_field(api, query, field):
    status, answer = api(query)
    assert status == 400 and answer["field"] == field


def test_parse_question_takes_either_family():
    assert parse_question("fd00:20::5", "2001:db8::7", "587")[2] == 587
