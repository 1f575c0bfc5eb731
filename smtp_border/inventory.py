"""The authoritative list of campus mail servers (policy rationale 5): the
relays, and every host or network allowed to speak SMTP across the border,
with why, who to call, and until when; which Part 2 grants the relay would
now carry (for review)."""
from .policy import format_size



def inventory(policy, now, soon):
    """A JSON-ready inventory; `soon` (a timedelta) marks exceptions about to expire."""
    exceptions = []
    review = {e.id: why for e, why in policy.for_review()}
    for exception in policy.exceptions:
        entry = exception.to_dict()
        if exception.id in review:
            entry["review"] = review[exception.id]
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
            "for_review": len(review),
            "lapsed": sum(e.get("lapsed", False) for e in exceptions),
        },
        "relay_max_message_size": None if policy.relay_limit is None else format_size(policy.relay_limit),
        "part2": {"grounds": list(policy.part2.grounds), "relay_suffices": policy.part2.relay_suffices},
    }
