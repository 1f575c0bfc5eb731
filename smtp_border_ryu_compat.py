"""Let stock ``ryu-manager`` (Ryu 4.34) start with a current eventlet (0.41, on
Python 3.11 to 3.13).

``ryu.app.wsgi`` imports ``eventlet.wsgi.ALREADY_HANDLED``, which eventlet
removed in 0.30.3, and ``ryu-manager`` (and Ryu's app manager, which
smtp-border-controller uses) imports ``ryu.app.wsgi`` before it loads any
application, so the fix cannot live in our app module. The app itself no
longer uses ``ryu.app.wsgi`` (ryu_apps/web.py); with os-ken, which has no
such module, this hook never fires.  The package ships a
``.pth`` file that imports this module at interpreter start-up; all it does then
is register an import hook.  Eventlet itself is imported only when something
imports ``ryu.app.wsgi``, so pip, pytest and other tools in the virtualenv pay
nothing.  Ryu uses the name only as an opaque marker for websocket responses,
so any unique object will do.
"""
import importlib.abc
import sys
import warnings

# Eventlet 0.36 and later warn at import that eventlet is in bugfix-only
# maintenance; both frameworks' hubs are eventlet, and the app relies on it
# (docs/running.md#why-the-eventlet-hub says so, and what would replace it).
# Eight lines at every start of the controller and the CLI tell an operator
# nothing they can act on.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

_HOOKED_MODULE = "ryu.app.wsgi"


class _EventletWsgiShim(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _HOOKED_MODULE:
            return None
        sys.meta_path.remove(self)
        import eventlet.wsgi

        if not hasattr(eventlet.wsgi, "ALREADY_HANDLED"):
            eventlet.wsgi.ALREADY_HANDLED = object()
        return None  # the regular finders load ryu.app.wsgi itself


def install():
    if not any(isinstance(f, _EventletWsgiShim) for f in sys.meta_path):
        sys.meta_path.insert(0, _EventletWsgiShim())


install()
