"""A small WSGI application on WebOb, and the eventlet server that serves it.

The REST API used to be a controller of Ryu's ``ryu.app.wsgi``, which
os-ken dropped in 2.0 and which, on Ryu, is served by ``eventlet.wsgi``
called with neither a socket timeout nor a bound on connections. This is
all the API needs of it: routes declared on a class's methods with
``@route(path, methods)``, ``{name}`` segments passed as keyword arguments,
and one fallback for what no route matched. It behaves the same on both
frameworks because it uses neither.

The server is ``eventlet.wsgi.server`` (eventlet 0.40.3 or later: earlier
ones carry CVE-2025-58068, request smuggling, docs/running.md#pins), on
the hub the OpenFlow side runs on, with a socket timeout and at most
``max_connections`` connections served at once, so that a few slow or idle
clients cannot hold every green thread (tests/integration/test_slow_clients.py).
"""
import logging
import re
import socket

import eventlet
import eventlet.wsgi
from webob import Request, Response

__all__ = ["Application", "HttpError", "Response", "listen", "route", "routes_of", "serve"]

LOG = logging.getLogger("smtp_border.http")
_SEGMENT = re.compile(r"\{(\w+)\}")


class HttpError(Exception):
    """An answer other than 2xx: its status, what to say, the request field at fault, headers."""

    def __init__(self, status, message, field=None, headers=None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.headers = headers or {}


def route(path, methods):
    """Declare a handler method for `path` ("{name}" matches one segment)
    and the HTTP `methods` it answers."""

    def decorate(handler):
        handler.routing_info = {"path": path, "methods": list(methods)}
        return handler

    return decorate


def routes_of(cls):
    """(path, method, attribute name) of every route `cls` declares or inherits."""
    members = {}
    for klass in reversed(cls.__mro__):
        members.update(vars(klass))
    for name, member in members.items():
        info = getattr(member, "routing_info", None)
        if info:
            for method in info["methods"]:
                yield info["path"], method, name


def _pattern(path):
    parts = _SEGMENT.split(path)  # literal, name, literal, name, ..., literal
    return re.compile("".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)))


class Application:
    """WSGI: dispatch each request to the method of `handlers` whose route
    matches its path and method; anything else to `handlers.fallback(req,
    methods)`, with the methods that path has (to say 404 or 405)."""

    def __init__(self, handlers):
        self.handlers = handlers
        self._routes = [(_pattern(path), method, name) for path, method, name in routes_of(type(handlers))]

    def allowed(self, path):
        """The methods some route answers at `path`."""
        return sorted({method for pattern, method, _ in self._routes if pattern.fullmatch(path)})

    def __call__(self, environ, start_response):
        req = Request(environ)
        path = req.path_info
        for pattern, method, name in self._routes:
            if method != req.method:
                continue
            match = pattern.fullmatch(path)
            if match:
                return getattr(self.handlers, name)(req, **match.groupdict())(environ, start_response)
        return self.handlers.fallback(req, self.allowed(path))(environ, start_response)


class _AccessLog:
    """eventlet.wsgi writes one access line a request (and an "accepted" line
    a connection) to a file-like `log`: here, a file of their own, line
    buffered, so that the controller's log stays what an operator reads."""

    def __init__(self, path):
        self.stream = open(path, "a", buffering=1, encoding="utf-8", errors="replace")

    def write(self, line):
        self.stream.write(line if line.endswith("\n") else line + "\n")


def listen(host, port):
    """The API's listening socket, bound now, so that a port in use is said
    at start-up, not in a green thread's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return eventlet.listen((host, port), family=family)


def serve(sock, application, timeout, max_connections, access_log=None):
    """Serve `application` on `sock` until the process ends. `access_log`: a
    file for one line a request; None: no access lines at all (of 114 log
    lines in a short session, 100 were access and "accepted" lines)."""
    log = _AccessLog(access_log) if access_log else None
    eventlet.wsgi.server(sock, application, log=log, log_output=log is not None, max_size=max_connections,
                         socket_timeout=timeout, keepalive=timeout)
