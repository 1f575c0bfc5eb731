"""Who is asking the REST API (ryu_apps/rest.py), and may they: the
bearer token's client (smtp_border/clients.py), the development mode's
loopback rule, the same-site rule for browsers; and where a request came
from and its id, for the trail (smtp_border/trail.py)."""
import ipaddress
import logging
import os
import re
import secrets

from ryu_apps.web import HttpError
from smtp_border.clients import READ_TOKEN_ENV, TOKEN_ENV, TOKENS_FILE_ENV, Clients  # noqa: F401  (names of the API)
from smtp_border.trail import Actor

LOG = logging.getLogger("smtp_border.rest")
# "1": a development controller on one machine: changes and offender reads
# without a token, from loopback clients naming a loopback Host only.
LOOPBACK_DEV_ENV = "SMTP_POLICY_LOOPBACK_DEV"

CHANGE, OFFENDERS = "change", "offenders"
CLIENT_KEY, REQUEST_KEY = "smtp_border.client", "smtp_border.request"
# Addresses of reverse proxies whose X-Forwarded-For names the client (comma
# separated); from anyone else the header is ignored (it could say anything).
TRUSTED_PROXIES_ENV = "SMTP_POLICY_TRUSTED_PROXIES"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _request_id(req):
    """The request's id: the client's X-Request-Id when it is a sane token, else a new one."""
    given = req.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(6)


def peer_of(req):
    """Where a request came from: the socket's peer, or the address a trusted
    proxy put last in X-Forwarded-For."""
    peer = req.remote_addr or "?"
    trusted = {a.strip() for a in (os.environ.get(TRUSTED_PROXIES_ENV) or "").split(",") if a.strip()}
    forwarded = req.headers.get("X-Forwarded-For")
    if forwarded and peer in trusted:
        last = forwarded.split(",")[-1].strip()
        if _is_address(last):
            return f"{last} (via {peer})"
    return peer


def actor_of(req):
    """Who makes this change (smtp_border/trail.Actor)."""
    return Actor(req.environ.get(CLIENT_KEY) or "?", peer_of(req), req.environ.get(REQUEST_KEY))


def loopback_dev():
    return os.environ.get(LOOPBACK_DEV_ENV) == "1"


def authorise(req, access=CHANGE):
    """Who may change the policy, or read who was blocked: the client's name
    (for the trail), or HttpError.

    With SMTP_POLICY_TOKEN: the bearer token (or, for offender reads, the
    read token). Without it, only in the explicit development mode: a
    loopback client that names a loopback Host (a rebound DNS name pointing at
    127.0.0.1 is refused). In every mode a change needs a JSON body type and
    no request may come from another site's page (Origin, Sec-Fetch-Site):
    a browser on the controller host cannot be made to change anything."""
    _same_site(req)
    client = _authenticate(req, access)
    if access == CHANGE and req.content_type != "application/json":
        raise HttpError(415, f"a change needs Content-Type: application/json, not {req.content_type or 'none'}")
    return client


def authorise_read(req):
    """A read that costs the switches: the read token (or the change token),
    or the development mode's loopback rule."""
    _same_site(req)
    return _authenticate(req, OFFENDERS)


def _authenticate(req, access):
    """The name of the client making the request (smtp_border/clients.py),
    or HttpError. A read client may read who was blocked, and change nothing."""
    clients = _clients()
    if clients:
        scheme, _, given = req.headers.get("Authorization", "").partition(" ")
        client = clients.who(given.strip()) if scheme.lower() == "bearer" and given.strip() else None
        if client is None:
            raise HttpError(401, "a valid 'Authorization: Bearer <token>' header is required",
                            headers={"WWW-Authenticate": 'Bearer realm="smtp-border"'})
        if access == CHANGE and not client.writes:
            raise HttpError(403, f"client {client.name!r} may read, not change: its scope is read")
        return client.name
    if access == CHANGE:
        needs, accepted = "changes need", "changes are accepted"
    else:
        needs, accepted = "reading who was blocked needs", "who was blocked is shown"
    if not loopback_dev():
        raise HttpError(403, f"{needs} a token: start the controller with {TOKEN_ENV} or {TOKENS_FILE_ENV}")
    if not _is_loopback(req.remote_addr):
        raise HttpError(403, f"in development mode ({LOOPBACK_DEV_ENV}=1), {accepted} only to loopback clients")
    host = _host_name(req.host or "")
    if host != "localhost" and not _is_loopback(host):
        raise HttpError(403, f"in development mode ({LOOPBACK_DEV_ENV}=1), the Host must be a loopback name or address,"
                        f" not {host!r}")
    return "loopback-dev"


_clients_cache = [None, None]


def _clients():
    """The API's clients as the environment names them, made again when it
    changes (the tests set it); the tokens file is read again when it does."""
    key = tuple(os.environ.get(name) for name in (TOKEN_ENV, READ_TOKEN_ENV, TOKENS_FILE_ENV))
    if _clients_cache[0] != key:
        _clients_cache[:] = [key, Clients(log=LOG)]
    return _clients_cache[1]


def _same_site(req):
    origin = req.headers.get("Origin")
    if origin is not None and origin != "null":
        netloc = origin.split("://", 1)[-1]
        if netloc.lower() != (req.host or "").lower():
            raise HttpError(403, f"cross-site request from {origin} refused")
    elif origin == "null" or req.headers.get("Sec-Fetch-Site") == "cross-site":
        raise HttpError(403, "cross-site request refused")


def _host_name(host):
    """The name or address of a Host header, without its port."""
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_address(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _is_loopback(text):
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return False
    # A dual-stack listener (--wsapi-host ::) shows IPv4 clients as ::ffff:a.b.c.d.
    address = getattr(address, "ipv4_mapped", None) or address
    return address.is_loopback


