"""What the REST API and the metrics may ask of the running controller.

A narrow door: REST (ryu_apps/rest.py) and the Prometheus collector
(ryu_apps/metrics.py) read through these functions, and change only
through `app.change`. Reads never take the change lock and never wait on a
switch longer than a deadline: what the agents last learned is reported
as it stands (GET /switches compiles nothing and asks no switch), and the
few reads that do ask switches (a verification, the counters at a scrape)
ask every agent at once and keep the last reading of one that is late.
It also writes the policy's summary lines to the log, at start and reload.
"""
import time

from ryu_apps.channel import SwitchFailed
from smtp_border.explain import explain as explain_connection
from smtp_border.policy import utc_now

# How long a scrape waits for the switches' counters; a switch later than
# this keeps its last reading (a silent switch must not stall /metrics).
READ_SECONDS = 2.0
# Warnings a start or a reload says one by one (log and answer); the rest are
# counted. 10,000 exceptions with 6,666 Part 2 entries without grounds once
# wrote 6,666 warning lines, and every reload answer carried them all.
WARNINGS_SHOWN = 5


def switch_status(app, dpid):
    """What GET /smtp/v1/switches reports for one switch: what the
    controller knows, without asking the switch or compiling anything."""
    listing = app.border.listing(dpid)
    agent = app.switches.get(dpid)
    status = {
        "dpid": f"{dpid:016x}",
        "name": listing.name,
        "role": listing.role,
        "uplinks": list(listing.uplinks),
        "connected": agent is not None,
        "in_sync": None,
        "pending": "not connected",
        "flow_count": None,
        "bundles": None,
        "fragments": None,
        "last_audit": None,
        "last_repair": None,
        "repairs": app.counters[("repairs", dpid)],
    }
    if agent is None:
        return status
    pending = agent.pending
    if agent.lagging and agent.in_sync:
        pending = "slow: still delivering an earlier change; its agent keeps at it"
    holds = (agent.role == "slave" and agent.holds) or agent.holds_change(app.changes)
    status.update(
        in_sync=holds, pending=pending, flow_count=agent.flow_count,
        bundles=agent.bundles, fragments=agent.fragments,
        last_audit=_iso(agent.last_audit), last_repair=_iso(agent.last_repair),
        audit_ms=_rounded(agent.audit_ms), full_audit_ms=_rounded(agent.full_audit_ms),
    )
    if not agent.bundles:
        status["version"] = agent.version
    if app.mastership is not None:
        status.update(openflow_role=agent.role, master=agent.master, generation=agent.generation,
                      replica=app.mastership.replica)
    if agent.choice is not None:
        needed, available, _ = app.border.budget(dpid)
        status["pipeline"] = agent.choice.to_dict()
        status["entries"] = {"table": agent.choice.profile.exception_table, "needed": needed,
                             "available": available,
                             "headroom": None if available is None else available - needed}
    return status


def known_dpids(app):
    listed = set(app.border.listed() or ())
    return sorted(listed | set(app.switches))


def verify_all(app, deadline_seconds):
    """Every connected switch compared in full now, by its agent (the
    full audit, which repairs what it finds); waits up to the deadline."""
    events = [agent.verify() for agent in list(app.switches.values())]
    deadline = time.monotonic() + deadline_seconds
    for event in events:
        event.wait(timeout=max(0.0, deadline - time.monotonic()))


def unsampled(app):
    """Enforcing switches that drop blocked packets without sampling them (no meters)."""
    return [f"{dpid:016x}" for dpid, agent in sorted(app.switches.items())
            if agent.choice is not None and not agent.choice.profile.meters
            and app.border.enforcing(dpid)]


def read_counters(app, seconds=READ_SECONDS):
    """Read the block counters and audit meters of every enforcing switch,
    all at once, for a scrape: {dpid: meter stats}. A switch that does not
    answer within `seconds` keeps its last reading (and is left out)."""
    meters, threads = {}, {}
    for dpid, agent in sorted(app.switches.items()):
        if not app.border.enforcing(dpid) or agent.choice is None:
            continue
        threads[dpid] = app.hub.spawn(_read, app, agent, seconds)
    for dpid, thread in threads.items():
        reading = thread.wait()
        if reading is not None:
            meters[dpid] = reading
    return meters


def _read(app, agent, seconds):
    try:
        agent.read_block_counters(timeout=seconds)
        return agent.meter_stats(timeout=seconds) if app.policy.audit.sample_rate else []
    except Exception as err:  # a switch that does not answer keeps its last reading
        app.logger.warning("smtp-border: metrics: switch %016x did not answer: %s", agent.dpid, err)
        return None


# -- the policy's summary in the log -------------------------------------------------

def explain(app, src, dst, port, seconds=READ_SECONDS):
    """GET /explain: the core's answer (smtp_border/explain.py) for the
    connected enforcing switches, each deciding flow with its packet counter
    read from the switch (all at once; a switch later than `seconds` says so)."""
    targets = {dpid: app.border.target(dpid) for dpid, agent in sorted(app.switches.items())
               if agent.choice is not None and app.border.enforcing(dpid)}
    answer = explain_connection(app.policy, targets, src, dst, port, listed=app.border.listed() or ())
    threads = {}
    for entry in answer["switches"]:
        rule = entry.pop("_rule", None)
        agent = app.switches.get(int(entry["dpid"], 16))
        if rule is not None and agent is not None:
            threads[entry["dpid"]] = (entry, app.hub.spawn(_counters, agent, rule, seconds))
    for entry, thread in threads.values():
        counted = thread.wait()
        if isinstance(counted, str):
            entry["counter"] = counted
        elif counted is None:
            entry["counter"] = "the switch does not hold this flow (a change on its way, or drift its audit repairs)"
        else:
            entry["packets"], entry["bytes"] = counted
    return answer


def _counters(agent, rule, seconds):
    try:
        return agent.counters_of(rule, timeout=seconds)
    except SwitchFailed as err:
        return f"not read: {err}"


def log_policy(app):
    p = app.policy
    now = utc_now()
    expired = [e for e in p.exceptions if not e.is_active(now)]
    if p.switches is None:
        where = "every switch, by addresses (no switches listed)"
    else:
        where = "; ".join(
            f"dpid {s.dpid:#x} " + ("access switch" if s.access else f"uplinks {list(s.uplinks)}" if s.uplinks
                                    else "by addresses")
            for s in p.switches
        ) or "no switch"
    app.logger.info(
        "smtp-border: policy %s: campus %s, smtp ports %s, %d gateway(s), %d exception(s) "
        "(%d from the API, %d expired); enforcing on %s",
        app.store.policy_file, ", ".join(map(str, p.campus)), list(p.smtp_ports), len(p.gateways),
        len(p.exceptions), len(app.store.api_exceptions), len(expired), where,
    )
    for e in expired:
        if e.lapsed:
            continue  # said by log_review
        app.logger.warning("smtp-border: exception %s (%s) expired at %s and is not enforced",
                           e.address, e.direction.value, e.expires.isoformat())
    log_quarantine(app, app.store.quarantined)
    log_review(app, p)


def log_review(app, policy):
    """Log what of `policy` deserves the operator's eye; return it
    (grants for review, warnings), for the reload's answer."""
    review, warnings = policy.for_review(), policy.warnings()
    for warning in warnings[:WARNINGS_SHOWN]:
        app.logger.warning("smtp-border: %s", warning)
    if len(warnings) > WARNINGS_SHOWN:
        app.logger.warning("smtp-border: %d warning(s) in all, %d shown; `smtp-border check --warnings %s` lists"
                           " every one", len(warnings), WARNINGS_SHOWN, app.store.policy_file)
    for e, why in review:
        app.logger.warning("smtp-border: Part 2 exception %s (%s) is for REVIEW: %s (granted \"until this"
                           " changes\"; contact %s)", e.id, e.address, why, e.contact or "none given")
    return review, warnings


def log_quarantine(app, quarantined):
    for q in quarantined:
        app.logger.warning(
            "smtp-border: API exception %s (%s) is QUARANTINED, not enforced: %s;"
            " remove it with DELETE /smtp/v1/exceptions/%s, or change %s",
            q.id, q.address, q.reason, q.id, app.store.policy_file,
        )


def _rounded(ms):
    return None if ms is None else round(ms, 2)


def _iso(moment):
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
