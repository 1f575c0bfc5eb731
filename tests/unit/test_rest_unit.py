"""REST pieces that need no switch: the API description matches the routes,
authorisation rules, request parsing."""
import pytest
import yaml
from webob import Request

from ryu_apps import rest
from ryu_apps.agent import _refuses_bundles
from ryu_apps.framework import ofproto_v1_3 as ofp

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


def request(remote_addr="127.0.0.1", authorization=None, host="127.0.0.1:8080", content_type="application/json",
            path="/smtp/v1/reload", method="POST", **headers):
    req = Request.blank(path, method=method, remote_addr=remote_addr)
    req.host = host
    if content_type:
        req.content_type = content_type
    if authorization is not None:
        req.headers["Authorization"] = authorization
    req.headers.update(headers)
    return req


def refused(req, access=rest.CHANGE):
    with pytest.raises(rest.HttpError) as caught:
        rest.authorise(req, access)
    return caught.value.status, str(caught.value)


@pytest.fixture
def no_token(monkeypatch):
    for name in (rest.TOKEN_ENV, rest.READ_TOKEN_ENV, rest.TOKENS_FILE_ENV, rest.LOOPBACK_DEV_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_a_token_nothing_changes_and_no_offender_is_shown(no_token):
    """No token and no explicit development mode: read-only, even from loopback."""
    assert refused(request()) == (403, "changes need a token: start the controller with SMTP_POLICY_TOKEN or SMTP_POLICY_TOKENS_FILE")
    assert refused(request(method="GET", content_type=None), rest.OFFENDERS)[0] == 403


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "localhost", "[::1]"])
def test_in_development_mode_loopback_clients_naming_loopback_may_change(no_token, address, host):
    no_token.setenv(rest.LOOPBACK_DEV_ENV, "1")
    rest.authorise(request(address, host=host))
    rest.authorise(request(address, host=host, method="GET", content_type=None), rest.OFFENDERS)


@pytest.mark.parametrize("address", ["10.20.3.10", "192.0.2.1", "::ffff:10.0.0.1", "fd00::1", "", "junk"])
def test_in_development_mode_other_clients_are_refused(no_token, address):
    no_token.setenv(rest.LOOPBACK_DEV_ENV, "1")
    assert refused(request(address))[0] == 403
    rest.authorise(request("127.0.0.1"))  # the twin from loopback passes


@pytest.mark.parametrize("host", ["evil.example:8080", "evil.example", "10.0.0.1:8080", "127.0.0.1.evil.example:8080"])
def test_in_development_mode_a_rebound_host_name_is_refused(no_token, host):
    """DNS rebinding: a name the attacker controls, resolving to 127.0.0.1."""
    no_token.setenv(rest.LOOPBACK_DEV_ENV, "1")
    status, message = refused(request(host=host))
    assert status == 403 and "the Host must be a loopback name or address" in message


@pytest.mark.parametrize("token_set", [False, True])
def test_a_page_of_another_site_is_refused_in_every_mode(no_token, token_set):
    if token_set:
        no_token.setenv(rest.TOKEN_ENV, "s3cret")
    else:
        no_token.setenv(rest.LOOPBACK_DEV_ENV, "1")
    bearer = "Bearer s3cret" if token_set else None
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "http://127.0.0.1:9999"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        assert refused(request(authorization=bearer, **headers))[0] == 403, headers
    # Same origin (a page served by the API itself), and no Origin at all (curl), pass.
    rest.authorise(request(authorization=bearer, Origin="http://127.0.0.1:8080"))
    rest.authorise(request(authorization=bearer))


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_change_needs_a_json_body_type_in_every_mode(no_token, content_type):
    """The body types a page may send without asking first (no-cors) are refused."""
    no_token.setenv(rest.LOOPBACK_DEV_ENV, "1")
    assert refused(request(content_type=content_type))[0] == 415
    rest.authorise(request(content_type="application/json"))


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", "Basic s3cret", "s3cret", "Bearer s3cret2", "Bearer s3cre", "Bearer s3cret s3cret"],
)
def test_with_a_token_only_the_right_bearer_passes(no_token, header):
    no_token.setenv(rest.TOKEN_ENV, "s3cret")
    no_token.setenv(rest.LOOPBACK_DEV_ENV, "1")  # the token rules whatever else is set
    with pytest.raises(rest.HttpError) as caught:
        rest.authorise(request("127.0.0.1", header))
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"])
def test_with_a_token_any_client_with_it_passes(no_token, header):
    no_token.setenv(rest.TOKEN_ENV, "s3cret")
    rest.authorise(request("192.0.2.1", header, host="controller.example.edu:8080"))


def test_the_read_token_shows_offenders_but_changes_nothing(no_token):
    no_token.setenv(rest.TOKEN_ENV, "s3cret")
    no_token.setenv(rest.READ_TOKEN_ENV, "reader")
    rest.authorise(request(authorization="Bearer reader", method="GET", content_type=None), rest.OFFENDERS)
    rest.authorise(request(authorization="Bearer s3cret", method="GET", content_type=None), rest.OFFENDERS)
    assert refused(request(authorization="Bearer reader")) == (403, "client 'reader' may read, not change: its scope is read")
    assert refused(request(method="GET", content_type=None), rest.OFFENDERS)[0] == 401


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


def test_the_router_passes_segments_and_says_404_and_405_as_json():
    """ryu_apps/web.py, the WSGI application the API is served by on both
    frameworks: a route's {segment} reaches its handler; a known path asked
    with another method is 405 naming the allowed ones; anything else is a
    JSON 404; a segment never spans a slash."""
    from ryu_apps import web

    seen = []

    class Handlers(rest.SmtpRestController):
        @web.route("/smtp/v1/exceptions/{exception_id}", methods=["GET"])
        def get_exception(self, req, exception_id):
            seen.append(exception_id)
            return rest.json_response(200, {"id": exception_id})

    application = web.Application(Handlers(app=None))

    def call(method, path):
        response = Request.blank(path, method=method).get_response(application)
        return response.status_int, response.json, response.headers

    assert call("GET", "/smtp/v1/exceptions/f1398fa45fcd")[:2] == (200, {"id": "f1398fa45fcd"}) and seen == ["f1398fa45fcd"]
    status, body, headers = call("PUT", "/smtp/v1/exceptions/f1398fa45fcd")
    assert status == 405 and headers["Allow"] == "DELETE, GET" and "use DELETE, GET" in body["error"]
    assert call("GET", "/smtp/v1/exceptions/a/b")[:2] == (404, {"error": "no such resource: /smtp/v1/exceptions/a/b"})
    assert call("GET", "/nowhere")[0] == 404
    assert seen == ["f1398fa45fcd"]


def test_every_route_of_the_api_is_served_by_the_router():
    from ryu_apps import web

    application = web.Application(rest.SmtpRestController(app=None))
    for path, method in rest.routes():
        concrete = path.replace("{exception_id}", "abc123")
        assert method in application.allowed(concrete), (method, path)
