"""The trail: who changed what, from where, when (issue 24).

Every change that went through a controller (an API add, remove or batch, a
reload, an expiry, another replica's change arriving through etcd) is one
JSON line in an append-only file beside the journal,
`policy.changes.jsonl` by default (SMTP_POLICY_TRAIL):

    {"at": "2026-12-06T10:02:03Z", "request": "7f3a9c21d0e4", "client": "alice",
     "peer": "192.0.2.10", "source": "api", "action": "add",
     "added": [{"id": "...", "address": "10.20.3.10/32", "direction": "inbound"}],
     "removed": [], "result": "enforced", "pending": []}

The journal (or etcd) holds what is in force and, with each API grant, who
granted it and when (`created_by`, `created_at`); this file holds the
history, which the journal's compaction does not keep. It is written after
the change is committed, flushed, not fsync'ed (a crash may lose its last
lines, never the change); it is the operator's to rotate (logrotate with
copytruncate). `smtp-border history` and GET /smtp/v1/history read it.
"""
import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .policy import format_utc

TRAIL_ENV = "SMTP_POLICY_TRAIL"
# A history answer holds at most this many changes (the newest).
MAX_HISTORY = 10000
# A trail line lists at most this many exceptions of each kind (a batch or a
# reload can change 10,000); the counts are always whole.
MAX_LISTED = 100


@dataclass(frozen=True)
class Actor:
    """Who makes a change: the client's name (smtp_border/clients.py; or
    "expiry", "reload", a replica's name), the peer address it came from,
    and the request id its answer and log line carry."""
    client: str
    peer: str = None
    request: str = None


def default_trail_path(policy_path):
    """policy.yaml -> policy.changes.jsonl, in the same directory."""
    path = Path(policy_path)
    return path.with_name(f"{path.stem}.changes.jsonl")


def summary(exceptions):
    """What a trail line says of each exception a change added or removed."""
    return [{"id": e.id, "address": str(e.address), "direction": e.direction.value} for e in exceptions]


class Trail:
    def __init__(self, path):
        self.path = Path(path)

    def record(self, at, request, client, peer, source, action, added=(), removed=(), result=None, pending=(),
               error=None):
        """Append one change; returns the entry written. OSError is the caller's to log (the change stands)."""
        entry = {"at": format_utc(at), "request": request, "client": client, "peer": peer, "source": source,
                 "action": action, "added": summary(added[:MAX_LISTED]), "removed": summary(removed[:MAX_LISTED]),
                 "added_count": len(added), "removed_count": len(removed), "result": result,
                 "pending": list(pending)}
        if error:
            entry["error"] = error
        line = json.dumps(entry, sort_keys=True, ensure_ascii=True, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="ascii") as stream:
            stream.write(line)
        return entry

    def since(self, moment=None, limit=MAX_HISTORY):
        """The changes at or after `moment` (an aware datetime; None: all), oldest
        first, at most the newest `limit`; lines that do not read are skipped
        (a torn last line after a crash)."""
        found = []
        try:
            stream = open(self.path, encoding="ascii", errors="replace")
        except FileNotFoundError:
            return []
        cutoff = None if moment is None else format_utc(moment.astimezone(datetime.timezone.utc).replace(microsecond=0))
        with stream:
            for line in stream:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict) or not isinstance(entry.get("at"), str):
                    continue
                # ISO 8601 in UTC with a Z sorts as text.
                if cutoff is None or entry["at"] >= cutoff:
                    found.append(entry)
                    if len(found) > limit:
                        del found[0]
        return found


def trail_for(policy_path, environ=None):
    environ = os.environ if environ is None else environ
    return Trail(environ.get(TRAIL_ENV) or default_trail_path(policy_path))
