"""What the controller says of each change: one log line, and one line of
the trail (smtp_border/trail.py), naming the request, the client, where it
came from, what it added and removed, and where it is in force. A refused
change gets one log line with its error; nothing is in the trail for it,
since nothing changed."""
import logging

from smtp_border.etcdstate import StateInDoubt
from smtp_border.policy import utc_now
from smtp_border.trail import Actor

LOG = logging.getLogger("smtp_border.changes")
# A log line names at most this many exceptions; the counts are whole.
NAMED = 3


def _who(actor):
    actor = actor or Actor("?")
    where = f" from {actor.peer}" if actor.peer else ""
    request = f" {actor.request}" if actor.request else ""
    return f"change{request} by {actor.client}{where}"


def _named(verb, exceptions):
    if not exceptions:
        return None
    names = ", ".join(f"{e.address} {e.direction.value} (id {e.id})" for e in exceptions[:NAMED])
    more = f" and {len(exceptions) - NAMED} more" if len(exceptions) > NAMED else ""
    return f"{verb} {names}{more}"


def recorded(app, actor, action, source, outcome, report):
    """A change went through: say it once in the log, and append it to the trail."""
    change = outcome.change
    removed = tuple(change.removed) + tuple(q.exception for q in change.dropped if q.exception is not None)
    dropped = [q for q in change.dropped if q.exception is None]
    parts = [p for p in (_named("added", change.added), _named("removed", removed)) if p]
    parts += [f"removed quarantined {q.address} (id {q.id})" for q in dropped[:NAMED]]
    pending = [f"{p['dpid']} ({p['reason']})" for p in report["pending"]]
    LOG.info("smtp-border: %s (%s): %s; in force on %d switch(es)%s", _who(actor), action,
             "; ".join(parts) or "no exception changed", len(report["enforced"]),
             f", PENDING on {', '.join(pending)}" if pending else "")
    try:
        app.trail.record(utc_now(), actor.request if actor else None, actor.client if actor else None,
                         actor.peer if actor else None, source, action, added=tuple(change.added), removed=removed,
                         result="pending" if report["pending"] else "enforced",
                         pending=[p["dpid"] for p in report["pending"]])
    except OSError as err:  # the change stands; its history line is lost, and that is said
        LOG.error("smtp-border: cannot append to the trail %s: %s", app.trail.path, err.strerror or err)


def refused(actor, action, err):
    """A change was refused (nothing changed): one line, with the error. One
    etcd may still commit (its answer was lost) is said to be in doubt."""
    verdict = "NOT CONFIRMED, etcd may still commit it" if isinstance(err, StateInDoubt) else "REFUSED, nothing changed"
    LOG.warning("smtp-border: %s (%s) %s: %s", _who(actor), action, verdict, " ".join(str(err).split())[:500])
