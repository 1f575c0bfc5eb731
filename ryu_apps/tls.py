"""TLS on the OpenFlow channel that works for more than one switch.

Ryu serves OpenFlow over TLS when started with `--ctl-privkey`,
`--ctl-cert` and `--ca-certs` (docs/running.md#tls). Ryu 4.34's
`hub.StreamServer` builds the TLS context inside the handler of the first
connection and pops the key, certificate and CA out of its arguments while
doing so: every later connection is wrapped with `ssl.wrap_socket` and
nothing else, so the second switch to connect fails its handshake (and with
Python 3.12, where `ssl.wrap_socket` is gone, so would the first). Here one
context is built when the server is made, with the CA required when given
(a switch without a certificate signed by it gets no OpenFlow session at
all), TLS 1.2 at least, and every refused handshake logged. A dpid the
policy pins to one certificate (certificate_sha256) is taken only by a
connection that presented it.
"""
import hashlib
import logging
import ssl

from ryu_apps.framework import hub

LOG = logging.getLogger("smtp_border.tls")
refused = 0  # handshakes refused since start (a metric)


def install():
    """Replace Ryu's StreamServer construction for TLS listeners (idempotent).
    Must run before Ryu starts its OpenFlow server, i.e. from an app's
    __init__: Ryu starts it after every app is made."""
    if getattr(hub.StreamServer, "_smtp_border_tls", False):
        return
    original = hub.StreamServer.__init__

    def __init__(self, listen_info, handle=None, backlog=None, spawn="default", **ssl_args):
        if not ssl_args:
            return original(self, listen_info, handle, backlog, spawn)
        context = _context(ssl_args)
        original(self, listen_info, handle, backlog, spawn)
        plain = self.handle

        def wrap_and_handle(sock, addr):
            global refused
            try:
                connection = context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as err:
                refused += 1
                LOG.warning("smtp-border: OpenFlow TLS handshake from %s refused: %s", _peer(addr), err)
                sock.close()
                return
            plain(connection, addr)

        self.handle = wrap_and_handle

    hub.StreamServer.__init__ = __init__
    hub.StreamServer._smtp_border_tls = True


def _context(ssl_args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(ssl_args["certfile"], ssl_args["keyfile"])
    if ssl_args.get("ca_certs"):
        context.load_verify_locations(ssl_args["ca_certs"])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _peer(addr):
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


def certificate_fits(app, dp):
    """A switch whose dpid the policy pins to a certificate must have
    presented that one (TLS): a device with another campus certificate
    cannot claim its dpid. The connection is closed otherwise."""
    pin = app.border.listing(dp.id).certificate_sha256
    if pin is None:
        return True
    getpeercert = getattr(getattr(dp, "socket", None), "getpeercert", None)
    certificate = getpeercert(binary_form=True) if getpeercert else None
    presented = hashlib.sha256(certificate).hexdigest() if certificate else None
    if presented == pin:
        return True
    app.counters[("certificate_refused", dp.id)] += 1
    app.logger.warning(
        "smtp-border: connection from %s claims dpid %016x, pinned to certificate %s..., but presented %s:"
        " closed", peer_of(dp), dp.id, pin[:16], f"{presented[:16]}..." if presented else "no certificate",
    )
    dp.close()
    return False


def peer_of(dp):
    address = getattr(dp, "address", None)
    return f"{address[0]}:{address[1]}" if address else "?"
