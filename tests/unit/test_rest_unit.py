"""REST pieces that need no switch: the API description matches the routes,
authorisation rules, request parsing."""
import pytest
import yaml
from webob import Request

from ryu_apps import rest
from ryu_apps.smtp_policy import _refuses_bundles
from ryu.ofproto import ofproto_v1_3 as ofp

from conftest import ROOT


def test_openapi_describes_exactly_the_routes_the_code_serves():
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    described = {
        (path, method.upper())
        for path, operations in spec["paths"].items()
        for method in operations
        if method != "parameters"
    }
    served = {(path.replace("{exception_id}", "{id}"), method) for path, method in rest.routes()}
    assert described == served


def request(remote_addr="127.0.0.1", authorization=None):
    req = Request.blank("/smtp/v1/reload", method="POST", remote_addr=remote_addr)
    if authorization is not None:
        req.headers["Authorization"] = authorization
    return req


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_a_token_loopback_clients_may_change(monkeypatch, address):
    monkeypatch.delenv(rest.TOKEN_ENV, raising=False)
    rest.authorise(request(address))


@pytest.mark.parametrize("address", ["10.20.3.10", "192.0.2.1", "::ffff:10.0.0.1", "fd00::1", "", "junk"])
def test_without_a_token_other_clients_are_refused(monkeypatch, address):
    monkeypatch.delenv(rest.TOKEN_ENV, raising=False)
    with pytest.raises(rest.HttpError) as caught:
        rest.authorise(request(address))
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", "Basic s3cret", "s3cret", "Bearer s3cret2", "Bearer s3cre", "Bearer s3cret s3cret"],
)
def test_with_a_token_only_the_right_bearer_passes(monkeypatch, header):
    monkeypatch.setenv(rest.TOKEN_ENV, "s3cret")
    with pytest.raises(rest.HttpError) as caught:
        rest.authorise(request("127.0.0.1", header))
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"])
def test_with_a_token_any_client_with_it_passes(monkeypatch, header):
    monkeypatch.setenv(rest.TOKEN_ENV, "s3cret")
    rest.authorise(request("192.0.2.1", header))


def body_request(body, content_type="application/json"):
    req = Request.blank("/smtp/v1/exceptions", method="POST", body=body)
    req.content_type = content_type
    return req


def test_read_json_accepts_an_object_and_refuses_the_rest():
    assert rest.read_json(body_request(b'{"a": 1}')) == {"a": 1}
    assert rest.read_json(body_request(b'{"a": 1}', "application/json; charset=utf-8")) == {"a": 1}
    for body, status in [(b"[]", 400), (b"nope", 400), (b"\xff", 400), (b"[" * 100000, 413), (b"[" * 5000 + b"]" * 5000, 400)]:
        with pytest.raises(rest.HttpError) as caught:
            rest.read_json(body_request(body))
        assert caught.value.status == status, body[:20]
    with pytest.raises(rest.HttpError) as caught:
        rest.read_json(body_request(b"{}", "text/plain"))
    assert caught.value.status == 415


def test_bundle_refusal_is_recognised():
    assert _refuses_bundles(ofp, [(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_EXPERIMENTER)])
    assert _refuses_bundles(ofp, [(ofp.OFPET_FLOW_MOD_FAILED, 0), (ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE)])
    assert not _refuses_bundles(ofp, [(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_PREREQ)])
    assert not _refuses_bundles(ofp, [])
