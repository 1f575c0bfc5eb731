"""The authoritative list of campus mail servers (policy rationale 5): the
relays, and every host or network allowed to speak SMTP across the border,
with why, who to call, and until when."""


def inventory(policy, now, soon):
    """A JSON-ready inventory; `soon` (a timedelta) marks exceptions about to expire."""
    exceptions = []
    for exception in policy.exceptions:
        entry = exception.to_dict()
        remaining = None if exception.expires is None else exception.expires - now
        entry["active"] = exception.is_active(now)
        entry["days_left"] = None if remaining is None else round(remaining.total_seconds() / 86400, 2)
        entry["expiring_soon"] = remaining is not None and entry["active"] and remaining <= soon
        exceptions.append(entry)
    return {
        "gateways": [g.to_dict() for g in policy.gateways],
        "exceptions": exceptions,
        "summary": {
            "gateways": len(policy.gateways),
            "exceptions": len(exceptions),
            "active": sum(e["active"] for e in exceptions),
            "expired": sum(not e["active"] for e in exceptions),
            "expiring_soon": sum(e["expiring_soon"] for e in exceptions),
            "soon_days": soon.days,
        },
    }
