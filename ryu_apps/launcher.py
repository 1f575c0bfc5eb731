"""``smtp-border-controller``: start the app on whichever framework is installed.

    smtp-border-controller --ofp-tcp-listen-port 6653 --wsapi-host 127.0.0.1 --log-file /var/log/smtp-border/controller.log

On Ryu this does what ``ryu-manager ryu_apps.smtp_policy`` does (which keeps
working, as documented); on os-ken, which has had no manager command since
4.0, it is the way to run the app. It takes the options operators use
(``--ofp-listen-host``, ``--ofp-tcp-listen-port``, ``--ofp-ssl-listen-port``
with ``--ctl-privkey``, ``--ctl-cert``, ``--ca-certs``; ``--wsapi-host``,
``--wsapi-port``; ``--log-file``, ``--verbose``; ``--config-file``), all
registered by the framework itself except the two ``--wsapi-*``, which
Ryu's manager registers and os-ken no longer has (ryu_apps/framework.py).
The order is the manager's: monkey-patch all but threads, parse the options,
start logging, patch threads, then load, make and start the app.
"""
import logging
import os
import sys

APP = "ryu_apps.smtp_policy"


from smtp_border.version import version  # noqa: E402  (one number for every part: smtp_border/version.py)


def main(argv=None):
    from ryu_apps import framework  # chooses the framework, and os-ken's eventlet hub

    hub = framework.hub
    hub.patch(thread=False)
    log = framework.module("log")
    log.early_init_log(logging.DEBUG)
    framework.module("controller.controller")  # registers the --ofp-* options
    framework.register_wsapi_options()
    conf = framework.cfg.CONF
    argv = _log_format(list(sys.argv[1:] if argv is None else argv))
    conf(args=argv, prog="smtp-border-controller", project="smtp-border",
         version=f"smtp-border-controller {version()} ({framework.NAME} {framework.VERSION}, Python"
                 f" {sys.version.split()[0]})",
         default_config_files=[])
    log.init_log()
    hub.patch(thread=True)
    logging.getLogger("smtp_border").info(
        "smtp-border: smtp-border-controller %s on %s %s, Python %s, pid %d", version(), framework.NAME,
        framework.VERSION, sys.version.split()[0], os.getpid())
    manager = framework.app_manager.AppManager.get_instance()
    manager.load_apps([APP])
    services = manager.instantiate_apps(**manager.create_contexts())
    try:
        hub.joinall(services)
    except KeyboardInterrupt:
        pass
    finally:
        manager.close()


def _log_format(argv):
    """--log-format text|json (the framework's option parser does not know
    it): taken out of `argv` into SMTP_POLICY_LOG_FORMAT (ryu_apps/logs.py)."""
    rest = []
    while argv:
        arg = argv.pop(0)
        if arg == "--log-format" and argv:
            os.environ["SMTP_POLICY_LOG_FORMAT"] = argv.pop(0)
        elif arg.startswith("--log-format="):
            os.environ["SMTP_POLICY_LOG_FORMAT"] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest


if __name__ == "__main__":
    main()
