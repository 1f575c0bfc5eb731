"""The one door to the OpenFlow framework: Ryu 4.34, or its maintained fork os-ken.

Every name the project takes from Ryu comes through this module, so that the
same code runs on either (docs/running.md#platforms). Which one is decided
once, at first import:

* ``SMTP_BORDER_FRAMEWORK=ryu`` or ``=os-ken`` says so;
* otherwise Ryu if it is installed (``pip install .[ryu]``, what ``make``
  does, so that stock ``ryu-manager ryu_apps.smtp_policy`` keeps working),
  else os-ken (``pip install .[os-ken]`` installs no Ryu at all).

The app needs the eventlet hub on both: it relies on cooperative
scheduling (a switch's state is read and written between green-thread
switches without locks, and every wait is an eventlet wait). Ryu has only
that hub; os-ken defaults to native threads since 3.0, and reads
``OSKEN_HUB_TYPE`` when ``os_ken.lib.hub`` is first imported, so it is set
here before that, and a process that already chose native threads is
refused with one line rather than run wrongly.

The two differ in what the app does not use: os-ken dropped
``ryu.app.wsgi`` (2.0) and the manager command (4.0). The REST API has its
own WSGI application (ryu_apps/web.py), and ``smtp-border-controller``
(ryu_apps/launcher.py) starts the app on either.
"""
import importlib
import importlib.metadata
import importlib.util
import os
import sys

from oslo_config import cfg as oslo_cfg

FRAMEWORK_ENV = "SMTP_BORDER_FRAMEWORK"
RYU, OS_KEN = "ryu", "os-ken"
_PACKAGES = {RYU: "ryu", OS_KEN: "os_ken"}


def _choose():
    asked = os.environ.get(FRAMEWORK_ENV, "").strip().lower().replace("_", "-")
    if asked:
        if asked not in _PACKAGES:
            sys.exit(f"smtp-border: {FRAMEWORK_ENV}={asked!r}: use {RYU} or {OS_KEN}")
        if importlib.util.find_spec(_PACKAGES[asked]) is None:
            sys.exit(f"smtp-border: {FRAMEWORK_ENV}={asked} but {_PACKAGES[asked]} is not installed:"
                     f" pip install 'smtp-border[{asked}]'")
        return asked
    for name in (RYU, OS_KEN):
        if importlib.util.find_spec(_PACKAGES[name]) is not None:
            return name
    sys.exit("smtp-border: neither Ryu nor os-ken is installed: pip install 'smtp-border[ryu]' (or [os-ken])")


NAME = _choose()
PACKAGE = _PACKAGES[NAME]
if NAME == OS_KEN:
    os.environ.setdefault("OSKEN_HUB_TYPE", "eventlet")


def module(path):
    return importlib.import_module(f"{PACKAGE}.{path}")


hub = module("lib.hub")
if getattr(hub, "HUB_TYPE", "eventlet") != "eventlet":
    sys.exit(f"smtp-border: os-ken runs here with its {hub.HUB_TYPE!r} hub; the app needs the eventlet hub:"
             " set OSKEN_HUB_TYPE=eventlet (smtp-border-controller does)")

cfg = module("cfg")
app_manager = module("base.app_manager")
App = app_manager.RyuApp if NAME == RYU else app_manager.OSKenApp  # the base class of an app
ofp_event = module("controller.ofp_event")
handler = module("controller.handler")
set_ev_cls = handler.set_ev_cls
HANDSHAKE_DISPATCHER = handler.HANDSHAKE_DISPATCHER
CONFIG_DISPATCHER = handler.CONFIG_DISPATCHER
MAIN_DISPATCHER = handler.MAIN_DISPATCHER
DEAD_DISPATCHER = handler.DEAD_DISPATCHER

ofproto_common = module("ofproto.ofproto_common")
ofproto_parser = module("ofproto.ofproto_parser")
ofproto_protocol = module("ofproto.ofproto_protocol")
ofproto_v1_3 = module("ofproto.ofproto_v1_3")
ofproto_v1_3_parser = module("ofproto.ofproto_v1_3_parser")

packet = module("lib.packet.packet")
ethernet = module("lib.packet.ethernet")
ipv4 = module("lib.packet.ipv4")
ipv6 = module("lib.packet.ipv6")
tcp = module("lib.packet.tcp")

try:
    VERSION = importlib.metadata.version(NAME)
except importlib.metadata.PackageNotFoundError:
    VERSION = "unknown"

# Where the REST API listens. Ryu's manager registers these (ryu.app.wsgi,
# which it imports whatever the apps); os-ken has no such module, so they
# are registered here when nobody did. Same names, same defaults as Ryu.
WSAPI_HOST, WSAPI_PORT = "0.0.0.0", 8080


def register_wsapi_options():
    for opt in (cfg.StrOpt("wsapi-host", default=WSAPI_HOST, help=f"REST API listen host (default {WSAPI_HOST})"),
                cfg.IntOpt("wsapi-port", default=WSAPI_PORT, help=f"REST API listen port (default {WSAPI_PORT})")):
        if opt.dest not in cfg.CONF:  # Ryu registers them (ryu.app.wsgi, which its app manager imports)
            cfg.CONF.register_cli_opt(opt)


def wsapi_address():
    """(host, port) the REST API listens on: --wsapi-host, --wsapi-port."""
    try:
        return cfg.CONF.wsapi_host, int(cfg.CONF.wsapi_port)
    except oslo_cfg.Error:
        return WSAPI_HOST, WSAPI_PORT
