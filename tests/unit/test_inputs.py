"""Inputs that can't hurt (issue 24): every request body the API can be
sent gets an answer below 500, a refused one names the field, and nothing
is saved. The real app (fake switches, tests/appkit.py) behind its real
router (ryu_apps/web.py), called in-process."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webob import Request

from appkit import connect, make_app_fixture
from ryu_apps import rest, web
from strategies import examples

make_app = pytest.fixture(make_app_fixture)
TOKEN = "inputs-token"
GOOD = {"address": "10.20.3.10", "direction": "inbound", "reason": "a mail server"}


@pytest.fixture
def api(make_app, monkeypatch):
    monkeypatch.setenv(rest.TOKEN_ENV, TOKEN)
    app = make_app()
    connect(app)
    application = web.Application(rest.SmtpRestController(app))

    def call(method, path, body=None, raw=None):
        req = Request.blank(rest.PREFIX + path, method=method, remote_addr="127.0.0.1")
        req.host = "127.0.0.1:8080"
        req.headers["Authorization"] = f"Bearer {TOKEN}"
        if body is not None or raw is not None:
            req.content_type = "application/json"
            req.body = raw if raw is not None else json.dumps(body).encode()
        response = req.get_response(application)
        return response.status_int, (json.loads(response.body) if response.body else None)

    call.app = app
    return call


def saved(api):
    return sorted(str(e.address) for e in api.app.store.api_exceptions)


@pytest.mark.parametrize("raw, field, words", [
    (b'{"address": "10.20.3.10", "direction": "inbound", "reason": "x", "n": ' + b"9" * 5000 + b"}", None,
     "a number of 5000 digits"),
    (json.dumps(dict(GOOD, expires="9999-12-31T23:00:00-05:00")).encode(), "expires", "out of range"),
    (b'{"address": "10.20.3.10", "address": "10.20.3.11", "direction": "inbound", "reason": "x"}', "address",
     "given twice"),
    (json.dumps(dict(GOOD, reason="\ud800")).encode(), "reason", "U+D800"),
    (json.dumps(dict(GOOD, reason="fine\nsmtp-border: change applied: forged")).encode(), "reason", "U+000A"),
    (json.dumps(dict(GOOD, reason="x" * 1001)).encode(), "reason", "at most 1000"),
    (json.dumps(dict(GOOD, contact="\x1b[31mred")).encode(), "contact", "U+001B"),
    (b'{"address": "10.20.3.10", "direction": "inbound", "reason": NaN}', None, "NaN"),
    (b'{"address": "10.20.3.10", "direction": "inbound", "reason": "x", "n": 1e999}', None, "out of range"),
    (json.dumps(dict(GOOD, direction="outbound", grounds="message-size", needs_message_size="9" * 14 + "GB")).encode(),
     "needs_message_size", "is not a size"),
    (json.dumps(dict(GOOD, direction="outbound", grounds="message-size", needs_message_size="5000GB")).encode(),
     "needs_message_size", "more than 1000GB"),
])
def test_each_bad_input_of_the_issue_is_a_400_naming_the_field_and_saves_nothing(api, raw, field, words):
    before = saved(api)
    status, body = api("POST", "/exceptions", raw=raw)
    assert status == 400 and words in body["error"], body
    assert body.get("field") == field
    # The same inside a batch.
    status, body = api("POST", "/exceptions/batch", raw=b'{"add": [' + raw + b"]}")
    assert status == 400 and words in body["error"], body
    assert saved(api) == before
    # Its twin: the good one goes through.
    status, body = api("POST", "/exceptions", GOOD)
    assert status == 201 and saved(api) == before + ["10.20.3.10/32"]


# Any JSON: text with control characters and lone surrogates, huge numbers,
# nesting; and request-shaped objects with such values in their fields.
_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=40)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=False, allow_infinity=False), _text)
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(_text, inner, max_size=4)), max_leaves=12)
_field = st.one_of(_json, st.sampled_from(["10.20.3.10", "10.20.0.0/16", "fd00:20::5", "inbound", "outbound",
                                           "both", "message-size", "200MB", "2027-01-01T00:00:00Z",
                                           "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]))
_request = st.dictionaries(st.sampled_from(["address", "direction", "reason", "contact", "expires", "grounds",
                                            "needs_message_size", "other"]), _field, max_size=8)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(_request, _json), batch=st.booleans())
def test_no_request_body_gets_a_server_error(api, body, batch):
    path = "/exceptions/batch" if batch else "/exceptions"
    document = {"add": [body], "remove": []} if batch and isinstance(body, dict) else body
    before = len(api.app.store.api_exceptions)
    status, answer = api("POST", path, raw=json.dumps(document).encode("utf-8", "surrogatepass"))
    assert status < 500, (status, answer)
    if status >= 400:
        assert len(api.app.store.api_exceptions) == before and answer["error"]
    # Whatever went in can be listed and written as UTF-8 (the CLI's table, the journal).
    status, listed = api("GET", "/exceptions")
    assert status == 200
    json.dumps(listed, ensure_ascii=False).encode("utf-8")


def test_every_change_says_who_from_where_and_is_kept_with_the_grant(api, caplog):
    """The trail (issue 24): one log line per change naming its request id,
    client, peer address, the exception and direction; created_by and
    created_at on the grant, across a restart of the store; GET /history."""
    import logging

    from smtp_border.store import PolicyStore

    with caplog.at_level(logging.INFO, logger="smtp_border.changes"):
        status, body = api("POST", "/exceptions", GOOD)
    assert status == 201 and body["created_by"] == "admin" and body["created_at"].endswith("Z")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "smtp_border.changes"]
    assert " by admin from 127.0.0.1 (add): added 10.20.3.10/32 inbound (id " in line and "in force on 1 switch" in line
    status, listed = api("GET", "/exceptions")
    (mine,) = [e for e in listed["exceptions"] if e["id"] == body["id"]]
    assert (mine["created_by"], mine["created_at"]) == ("admin", body["created_at"])
    # A refused change is one line too, naming the error; nothing in the trail for it.
    with caplog.at_level(logging.INFO, logger="smtp_border.changes"):
        assert api("POST", "/exceptions", dict(GOOD, direction="inbound", reason="again, other"))[0] == 409
    assert "REFUSED, nothing changed: an exception for 10.20.3.10/32 already exists" in caplog.records[-1].getMessage()
    status, history = api("GET", "/history")
    assert status == 200 and [(c["client"], c["action"], c["peer"], c["result"]) for c in history["changes"]] == [
        ("admin", "add", "127.0.0.1", "enforced")]
    assert history["changes"][0]["added"][0]["address"] == "10.20.3.10/32"
    # Kept with the grant: a restart reads it back from the journal.
    store = api.app.store
    again = PolicyStore(store.policy_file, store.state_file)
    (grant,) = again.api_exceptions
    assert grant.created_by == "admin" and grant.to_dict()["created_at"] == body["created_at"]
    # A client cannot write its own provenance.
    status, answer = api("POST", "/exceptions", dict(GOOD, address="10.20.3.11", created_by="someone else"))
    assert status == 400 and answer["field"] == "created_by"
