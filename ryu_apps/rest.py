"""REST API of smtp-border, on its own WSGI server (ryu_apps/web.py; --wsapi-host, --wsapi-port).

    GET    /smtp/v1/policy            the policy in force
    GET    /smtp/v1/exceptions        every exception, from the file and the API
    POST   /smtp/v1/exceptions        add one (201 once every listed switch confirmed)
    POST   /smtp/v1/exceptions/batch  remove and add many, as one change
    DELETE /smtp/v1/exceptions/<id>   remove one added over the API, or a quarantined one
    POST   /smtp/v1/reload            re-read policy.yaml, apply the difference
    GET    /smtp/v1/switches          each switch: connected, in sync, pending, audits
    GET    /smtp/v1/blocked           recent blocked attempts (sampled)
    GET    /smtp/v1/blocked/top       hosts ranked by blocked attempts
    GET    /smtp/v1/mailservers       the inventory: relays and every exception
    GET    /smtp/v1/history           who changed what, since a time (the read token)
    GET    /smtp/v1/version           the release running
    GET    /smtp/v1/explain           why a connection is blocked or allowed, switch by switch
    GET    /metrics                   Prometheus text format
    GET    /smtp/                     the status page (read-only; ryu_apps/status/)

docs/openapi.yaml describes it. Every answer is JSON, errors too:
{"error": "..."} (plus "field" when one field of the request is at fault).

A change answers with "switches": {"enforced": [...], "pending": [...]},
the listed switches that confirmed it and those that did not, with why:

    200/201  in force on every listed switch
    202      saved and in force on every connected switch; listed switches
             that are not connected are pending and get it on connection
    502      saved, but a connected switch did not confirm it; the controller
             retries by itself (GET /switches shows progress)
    500      saved, but delivering it crashed (a bug; the log has it); retried
    503      not saved (the state file cannot be written, or etcd cannot be
             reached): nothing changed; or, with etcd, not confirmed: etcd
             may still commit it once it has a quorum (the answer says so)
    409      refused: a conflicting exception (or another controller changed
             it at the same moment), or a switch's flow table
             would overflow ("budget": which switch, entries needed and
             available); nothing changed

Sending the same request again is always safe: an exception already in
force is answered 200, one already removed 404.
"""
import datetime
import functools
import json
import logging
import os
import time
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ryu_apps import facade, framework, web
from ryu_apps.auth import (  # noqa: F401  (the API's names, as the tests and docs use them)
    CHANGE, CLIENT_KEY, LOOPBACK_DEV_ENV, OFFENDERS, READ_TOKEN_ENV, REQUEST_KEY, TOKEN_ENV, TOKENS_FILE_ENV,
    _clients, _request_id, actor_of, authorise, authorise_read, loopback_dev,
)
from ryu_apps.bodies import MAX_BODY, query_int, query_time, query_window, read_json  # noqa: F401
from ryu_apps.metrics import registry_for
from ryu_apps.web import HttpError, Response, route
from smtp_border.audit import format_time
from smtp_border.clients import ClientsError
from smtp_border.inventory import inventory
from smtp_border.policy import PolicyError, utc_now
from smtp_border.etcdstate import ConcurrentChange, StateInDoubt
from smtp_border.explain import parse_question
from smtp_border.pipeline import OverBudget
from smtp_border.state import StateUnavailable
from smtp_border.store import Conflict, NotFound
from smtp_border.trail import MAX_HISTORY
from smtp_border.version import python_version, version

LOG = logging.getLogger("smtp_border.rest")
# SMTP_POLICY_TOKEN (the client "admin": changes, and reads of who was
# blocked), SMTP_POLICY_READ_TOKEN (the client "reader": reads only) and
# SMTP_POLICY_TOKENS_FILE (named clients) come from smtp_border/clients.py.
# Slow or idle clients are dropped after this many seconds, and at most
# this many connections are served at once (ryu_apps/web.py).
# A file for the HTTP access log (one line a request); unset: none.
ACCESS_LOG_ENV = "SMTP_POLICY_ACCESS_LOG"
HTTP_TIMEOUT_ENV = "SMTP_POLICY_HTTP_TIMEOUT"
HTTP_TIMEOUT = 10.0
MAX_CONNECTIONS = 128
# A batch carries up to MAX_BATCH exceptions (about 100 bytes each).
MAX_BATCH = 10000
MAX_BATCH_BODY = 4 * 1024 * 1024
PREFIX = "/smtp/v1"
# ?verify=1 reads every flow of every switch (0.3 to 0.55 s of controller
# CPU a switch at 10,000 flows): at most once this often (seconds).
VERIFY_SECONDS_ENV = "SMTP_POLICY_VERIFY_SECONDS"
VERIFY_SECONDS = 10.0


MAX_EVENTS = 10000


def register(app):
    """Make the API of `app`; returns start(), which binds --wsapi-host and
    --wsapi-port and serves in a green thread."""
    try:
        clients = _clients()
    except ClientsError as err:  # fail closed, saying what to fix
        raise SystemExit(f"smtp-border: {err}") from None
    if clients:
        app.logger.info("smtp-border: REST clients: %s (changes and who was blocked need a bearer token)",
                        ", ".join(clients.names) or f"none yet in {clients.path}")
    elif loopback_dev():
        app.logger.warning(
            "smtp-border: %s=1: DEVELOPMENT mode: the REST API accepts changes without a token from loopback"
            " clients naming a loopback Host; never run a border like this", LOOPBACK_DEV_ENV,
        )
    else:
        app.logger.warning(
            "smtp-border: %s is not set: the REST API is read-only (set it to make changes; %s=1 for a"
            " development controller on loopback)", TOKEN_ENV, LOOPBACK_DEV_ENV,
        )
    app.metrics_registry = registry_for(app)
    application = web.Application(SmtpRestController(app))
    timeout = float(os.environ.get(HTTP_TIMEOUT_ENV) or HTTP_TIMEOUT)

    def start():
        host, port = framework.wsapi_address()
        try:
            sock = web.listen(host, port)
        except OSError as err:
            raise SystemExit(f"smtp-border: the REST API cannot listen on {host}:{port} (--wsapi-host,"
                             f" --wsapi-port): {err}") from None
        access_log = os.environ.get(ACCESS_LOG_ENV) or None
        app.logger.info("smtp-border: REST API on http://%s:%d%s%s", host, port, PREFIX,
                        f"; access log in {access_log}" if access_log else f" (no access log; {ACCESS_LOG_ENV} sets one)")
        return framework.hub.spawn(web.serve, sock, application, timeout, MAX_CONNECTIONS, access_log)

    return start


STATUS_DIR = Path(__file__).with_name("status")
STATUS_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The page loads nothing but its own script and style and reads only this
# API: no inline script, no other origin, no framing, no form posts.
STATUS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
                               " img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def status_asset(name):
    """One file of the status page (ryu_apps/status/), read at each request:
    a few kilobytes, and an upgrade is seen without a restart."""
    path = STATUS_DIR / name
    return Response(status=200, body=path.read_bytes(),
                    headers=dict(STATUS_HEADERS, **{"Content-Type": f"{STATUS_TYPES[path.suffix]}; charset=utf-8"}))


def build_info():
    """What GET /version, smtp_border_build_info and the status page's footer say."""
    return {"version": version(), "framework": framework.NAME, "framework_version": framework.VERSION,
            "python": python_version()}


def json_response(status, document=None, headers=None):
    # Compact: with an indent, json falls back to its pure-Python encoder,
    # which costs tens of milliseconds for a list of thousands of exceptions.
    body = b"" if document is None else (json.dumps(document) + "\n").encode()
    response = Response(status=status, body=body, content_type="application/json", charset="utf-8")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def api(access=None):
    """JSON in and out, errors as {"error"}, and authorisation: `access` is
    CHANGE for requests that change state, OFFENDERS for reads of who was
    blocked, None for the rest."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, req, **kwargs):
            request = _request_id(req)
            req.environ[REQUEST_KEY] = request
            try:
                if access:
                    req.environ[CLIENT_KEY] = authorise(req, access)
                response = handler(self, req, **kwargs)
                response.headers["X-Request-Id"] = request
                return response
            except HttpError as err:
                document = {"error": str(err)}
                if err.field:
                    document["field"] = err.field
                return json_response(err.status, document, err.headers)
            except PolicyError as err:
                field = err.path or None
                message = f"{err.path}: {err.problem}" if err.source == "request" else str(err)
                return json_response(400, {"error": message, **({"field": field} if field else {})})
            except Conflict as err:
                document = {"error": str(err)}
                if err.existing is not None:
                    document["existing"] = err.existing.to_dict()
                return json_response(409, document)
            except ConcurrentChange as err:
                return json_response(409, {"error": str(err)})
            except OverBudget as err:
                return json_response(409, {"error": f"refused, nothing changed: {err}", "budget": err.to_dict()})
            except NotFound as err:
                return json_response(404, {"error": str(err)})
            except StateUnavailable as err:
                LOG.error("smtp-border: REST %s %s: %s", req.method, req.path, err)
                if isinstance(err, StateInDoubt):  # etcd may still commit it: say so, not "nothing changed"
                    return json_response(503, {"error": f"not confirmed: {err}"}, {"Retry-After": "30"})
                return json_response(503, {"error": f"not saved, nothing changed: {err}"}, {"Retry-After": "30"})
            except Exception:  # never a traceback to the client; the log has it
                LOG.exception("smtp-border: REST %s %s failed", req.method, req.path)
                return json_response(500, {"error": "internal error; see the controller log"})

        return wrapper

    return decorate


def policy_document(store):
    policy = store.policy
    return {
        "policy_file": store.policy_file,
        "state_file": store.state_file,
        "campus": {"prefixes": [str(p) for p in policy.campus]},
        "smtp_ports": list(policy.smtp_ports),
        "gateways": [g.to_dict() for g in policy.gateways],
        "part2": {"grounds": list(policy.part2.grounds), "relay_suffices": policy.part2.relay_suffices},
        "exceptions": [e.to_dict() for e in policy.exceptions],
        "switches": None if policy.switches is None else [
            {"dpid": f"{s.dpid:016x}", "name": s.name, "uplinks": list(s.uplinks)} for s in policy.switches
        ],
    }


def exception_state(exception, active):
    """active, expired, or lapsed (a Part 2 grant the relay now carries, with part2_relay_suffices: lapse)."""
    return "active" if exception.id in active else "lapsed" if exception.lapsed else "expired"


def change_document(change, report):
    return {
        "added": [e.to_dict() for e in change.added],
        "removed": [e.to_dict() for e in change.removed] + [q.to_dict() for q in change.dropped],
        "switches": report,
    }


def change_response(status, document, report, headers=None):
    """The answer to a change: `status` when every listed switch enforces it,
    otherwise what the report says (see the module's docstring)."""
    crashed = report.pop("crashed", None)
    if crashed:
        status = 500
        document["error"] = ("the change is saved, but delivering it crashed on switch(es) "
                             + ", ".join(f"{d:016x} ({e})" for d, e in sorted(crashed.items()))
                             + "; the controller retries; see its log")
    elif any(p["connected"] for p in report["pending"]):
        status = 502
        document["error"] = ("the change is saved, but switch(es) "
                             + ", ".join(f"{p['dpid']} ({p['reason']})" for p in report["pending"] if p["connected"])
                             + " did not confirm it; the controller retries by itself")
    elif report["pending"]:
        status = 202
    return json_response(status, document, headers)


def routes():
    """(path, method) of every route the API serves, as the @route decorators say."""
    for path, method, _ in web.routes_of(SmtpRestController):
        yield path, method


class SmtpRestController:
    """The API's handlers (ryu_apps/web.py routes to them)."""

    def __init__(self, app):
        self.app = app
        self.verified_at = float("-inf")  # when ?verify=1 last ran

    @route(PREFIX + "/policy", methods=["GET"])
    @api()
    def get_policy(self, req, **_):
        return json_response(200, policy_document(self.app.store))

    @route(PREFIX + "/exceptions", methods=["GET"])
    @api()
    def list_exceptions(self, req, **_):
        active = self.app.border.active_ids
        exceptions = [dict(e.to_dict(), state=exception_state(e, active)) for e in self.app.policy.exceptions]
        quarantined = [q.to_dict() for q in self.app.store.quarantined]
        return json_response(200, {"exceptions": exceptions + quarantined})

    @route(PREFIX + "/exceptions/{exception_id}", methods=["GET"])
    @api()
    def get_exception(self, req, exception_id, **_):
        for q in self.app.store.quarantined:
            if q.id == exception_id:
                return json_response(200, q.to_dict())
        exception = self.app.store.exception(exception_id)
        return json_response(200, dict(exception.to_dict(), state=exception_state(exception, self.app.border.active_ids)))

    @route(PREFIX + "/exceptions", methods=["POST"])
    @api(CHANGE)
    def add_exception(self, req, **_):
        data = read_json(req)
        by = req.environ.get(CLIENT_KEY)
        outcome, report = self._change(req, lambda border: border.add(data, by=by), "add")
        exception = outcome.subject
        return change_response(201 if outcome.change.added else 200, {**exception.to_dict(), "switches": report},
                               report, {"Location": f"{PREFIX}/exceptions/{exception.id}"})

    @route(PREFIX + "/exceptions/batch", methods=["POST"])
    @api(CHANGE)
    def batch(self, req, **_):
        data = read_json(req, MAX_BATCH_BODY)
        unknown = sorted(set(data) - {"add", "remove"})
        if unknown:
            raise HttpError(400, f"unknown key {unknown[0]!r}; a batch has 'add' and 'remove'", field=unknown[0])
        additions, removals = data.get("add", []), data.get("remove", [])
        for name, items in (("add", additions), ("remove", removals)):
            if not isinstance(items, list):
                raise HttpError(400, f"{name}: expected a list", field=name)
        if len(additions) + len(removals) > MAX_BATCH:
            raise HttpError(413, f"a batch holds at most {MAX_BATCH} exceptions; split it")
        by = req.environ.get(CLIENT_KEY)
        outcome, report = self._change(req, lambda border: border.batch(additions, removals, by=by), "batch")
        return change_response(200, change_document(outcome.change, report), report)

    @route(PREFIX + "/exceptions/{exception_id}", methods=["DELETE"])
    @api(CHANGE)
    def delete_exception(self, req, exception_id, **_):
        outcome, report = self._change(req, lambda border: border.remove(exception_id), "remove")
        return change_response(200, change_document(outcome.change, report), report)

    @route(PREFIX + "/reload", methods=["POST"])
    @api(CHANGE)
    def reload(self, req, **_):
        def reload(border):
            try:
                return border.reload()
            except (PolicyError, OverBudget):
                self.app.counters["reload_failures"] += 1
                raise

        before = {q.id for q in self.app.store.quarantined}
        outcome, report = self._change(req, reload, "reload")
        self.app.counters["reloads"] += 1
        newly = [q for q in outcome.change.quarantined if q.id not in before]
        facade.log_quarantine(self.app, newly)
        document = change_document(outcome.change, report)
        document["quarantined"] = [q.to_dict() for q in outcome.change.quarantined]
        # Message-size grants the relay now carries ("until this changes"),
        # and file entries that deserve a look: the operator reads them here.
        review, warnings = facade.log_review(self.app, outcome.change.policy)
        document["review"] = [dict(e.to_dict(), review=why) for e, why in review]
        document["warnings"] = list(warnings[:facade.WARNINGS_SHOWN])
        document["warnings_count"] = len(warnings)
        return change_response(200, document, report)

    @route(PREFIX + "/switches", methods=["GET"])
    @api()
    def switches(self, req, **_):
        # What the controller knows (kept up to date by pushes and audits):
        # no switch is asked and nothing compiled, so this is cheap. With
        # ?verify=1 (the read token; at most once every VERIFY_SECONDS) every
        # connected switch's agent compares it in full first, for up to the
        # change deadline; no lock is taken.
        if req.GET.get("verify") not in (None, "0", "false"):
            authorise_read(req)
            now = time.monotonic()
            every = float(os.environ.get(VERIFY_SECONDS_ENV) or VERIFY_SECONDS)
            if now - self.verified_at < every:
                wait = every - (now - self.verified_at)
                raise HttpError(429, f"a full verification ran {now - self.verified_at:.1f} s ago; try again in"
                                f" {wait:.0f} s", headers={"Retry-After": str(int(wait) + 1)})
            self.verified_at = now
            facade.verify_all(self.app, self.app.timing.change_deadline)
        statuses = [facade.switch_status(self.app, dpid) for dpid in facade.known_dpids(self.app)]
        return json_response(200, {"switches": statuses})

    @route(PREFIX + "/blocked", methods=["GET"])
    @api(OFFENDERS)
    def blocked(self, req, **_):
        since = query_time(req, "since")
        limit = query_int(req, "limit", 100, 1, MAX_EVENTS)
        events = [vars(a) for a in self.app.audit.query(since, limit)]
        return json_response(200, {"events": events, "sampled": True, "log": str(self.app.audit.path),
                                   **self._unsampled()})

    @route(PREFIX + "/blocked/top", methods=["GET"])
    @api(OFFENDERS)
    def blocked_top(self, req, **_):
        window = query_window(req, "window", 86400)
        limit = query_int(req, "limit", 20, 1, 1000)
        since = utc_now() - datetime.timedelta(seconds=window)
        ranking = self.app.audit.top(since, limit)
        return json_response(200, {"window_seconds": window, "since": format_time(since), "sampled": True, **ranking,
                                   **self._unsampled()})

    def _unsampled(self):
        """Enforcing switches that drop blocked packets without sampling them
        (no meters: docs/hardware.md): their attempts are not in the log."""
        dpids = facade.unsampled(self.app)
        if not dpids:
            return {}
        return {"unsampled_switches": dpids,
                "note": "these switches have no meters: they block without sending samples, so their attempts are"
                        " not listed here; smtp_border_blocked_packets in /metrics counts them"}

    @route(PREFIX + "/history", methods=["GET"])
    @api(OFFENDERS)
    def history(self, req, **_):
        since = query_time(req, "since")
        limit = query_int(req, "limit", 100, 1, MAX_HISTORY)
        return json_response(200, {"changes": self.app.trail.since(since, limit), "trail": str(self.app.trail.path)})

    @route(PREFIX + "/explain", methods=["GET"])
    @api()
    def explain(self, req, **_):
        """Why can't this host send mail? (smtp_border/explain.py)"""
        try:
            src, dst, port = parse_question(req.GET.get("src"), req.GET.get("dst"), req.GET.get("port", "25"))
        except ValueError as err:
            field, message = err.args
            raise HttpError(400, message, field=field) from None
        return json_response(200, facade.explain(self.app, src, dst, port))

    @route(PREFIX + "/version", methods=["GET"])
    @api()
    def version(self, req, **_):
        return json_response(200, build_info())

    @route(PREFIX + "/mailservers", methods=["GET"])
    @api()
    def mailservers(self, req, **_):
        soon = query_int(req, "soon_days", 30, 0, 3650)
        return json_response(200, inventory(self.app.policy, utc_now(), datetime.timedelta(days=soon)))

    @route("/smtp/", methods=["GET"])
    def status_page(self, req, **_):
        return status_asset("index.html")

    @route("/smtp", methods=["GET"])
    def status_redirect(self, req, **_):
        return Response(status=301, headers={"Location": "/smtp/"})

    @route("/smtp/status.js", methods=["GET"])
    def status_script(self, req, **_):
        return status_asset("status.js")

    @route("/smtp/status.css", methods=["GET"])
    def status_style(self, req, **_):
        return status_asset("status.css")

    @route("/metrics", methods=["GET"])
    @api()
    def metrics(self, req, **_):
        return Response(status=200, body=generate_latest(self.app.metrics_registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})

    def fallback(self, req, methods):
        """What no route matched: a JSON 404, or 405 naming the `methods` that path has."""
        if methods:
            return json_response(405, {"error": f"{req.method} is not allowed here; use {', '.join(methods)}"},
                                 {"Allow": ", ".join(methods)})
        return json_response(404, {"error": f"no such resource: {req.path}"})

    def _change(self, req, make, action):
        """Apply one change through the app, as the request's client (its log
        line and trail line: ryu_apps/history.py)."""
        return self.app.change(make, actor=actor_of(req), action=action)
