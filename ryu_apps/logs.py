"""How the controller's log reads: plain lines (Ryu's own format) or, with
SMTP_POLICY_LOG_FORMAT=json (`smtp-border-controller --log-format json`),
one JSON object a line for a SIEM: time (UTC, ms), level, logger, message,
and the traceback when there is one. And a line when the service is told to
stop (SIGTERM), so that a restart is not read as a crash."""
import datetime
import json
import logging
import os
import signal

LOG_FORMAT_ENV = "SMTP_POLICY_LOG_FORMAT"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        moment = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        entry = {"time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(environ=None, logger=None):
    """Apply SMTP_POLICY_LOG_FORMAT to the root logger's handlers, and log SIGTERM."""
    environ = os.environ if environ is None else environ
    wanted = (environ.get(LOG_FORMAT_ENV) or "text").lower()
    if wanted not in FORMATS:
        raise SystemExit(f"smtp-border: {LOG_FORMAT_ENV}={wanted!r}: use {' or '.join(FORMATS)}")
    if wanted == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    logger = logger or logging.getLogger("smtp_border")

    def stopping(signum, _frame):
        logger.warning("smtp-border: SIGTERM received (pid %d): stopping; the switches keep the flows they hold",
                       os.getpid())
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # end as a SIGTERM ends it, now that it is said

    signal.signal(signal.SIGTERM, stopping)
    return wanted
