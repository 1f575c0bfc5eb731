""""Why can't this host send mail?": the helpdesk's question, answered from
the policy and from the flows each switch holds (issue 24).

`explain(policy, targets, src, dst, port)` says what the policy makes of a
TCP connection from `src` to `dst`:`port`: not the policy's concern (not an
SMTP port), campus to campus, transit, Part 1 (outside to campus) or Part 2
(campus to outside); allowed or blocked, and by what: a relay (gateway),
an exception (its id, reason, contact, expiry and grounds), or nothing, with
an exception that would have allowed it had it not expired or lapsed. Then,
for each enforcing switch it is given the target of, the flows the packet
meets there (smtp_border/flowsim.py walks them as the switch does), the one
that decides, and whether that verdict agrees with the policy's meaning
(smtp_border/semantics.py): the same question asked of the text and of the
tables. The Ryu layer adds each deciding flow's packet counter, read from
the switch (ryu_apps/facade.explain).
"""
import netaddr

from .flowsim import path
from .policy import format_utc, utc_now
from .rules import IP_PROTO_TCP, to_ofctl
from .semantics import Packet, is_allowed

# Where a packet from the campus arrives on a switch whose uplinks are known:
# any port that is not an uplink; this one is above every real port number.
CAMPUS_SIDE_PORT = 0xFFFFFF00 - 1


def meaning(policy, src, dst, port, now=None):
    """What the policy says of the connection, without any switch: a dict."""
    now = now or utc_now()
    from_campus, to_campus = policy.is_campus(src), policy.is_campus(dst)
    answer = {"src": str(src), "dst": str(dst), "port": port, "family": f"ipv{src.version}",
              "from": "campus" if from_campus else "outside", "to": "campus" if to_campus else "outside"}
    if port not in policy.smtp_ports:
        return dict(answer, part=None, allowed=True,
                    why=f"port {port} is not an SMTP port of the policy ({', '.join(map(str, policy.smtp_ports))}):"
                        " the policy does not concern it")
    if from_campus and to_campus:
        return dict(answer, part=None, allowed=True, why="campus to campus: the border policy does not concern it")
    if not from_campus and not to_campus:
        return dict(answer, part=None, allowed=True, why="outside to outside (transit): not the campus's mail")
    inbound = not from_campus
    host = dst if inbound else src
    part = "part1" if inbound else "part2"
    for gateway in policy.gateways:
        if any(host in network for network in gateway.addresses):
            return dict(answer, part=part, allowed=True, by={"gateway": gateway.name},
                        why=f"{host} is the campus relay {gateway.name!r}: mail goes through it")
    allows = [e for e in policy.exceptions if (e.direction.allows_inbound if inbound else e.direction.allows_outbound)
              and host in e.address]
    active = sorted((e for e in allows if e.is_active(now)), key=lambda e: -e.address.prefixlen)
    if active:
        e = active[0]
        return dict(answer, part=part, allowed=True, by={"exception": _exception(e)},
                    why=f"{host} is granted exception {e.id} ({e.address}, {e.direction.value}): {e.reason}")
    rule = ("Part 1: connections from outside to TCP/25 of campus hosts are blocked, except registered independent"
            " mail systems" if inbound else
            "Part 2: campus hosts may not connect to TCP/25 outside; all outbound mail goes through the campus relay")
    relays = ", ".join(f"{g.name} ({', '.join(map(str, g.addresses))})" for g in policy.gateways) or "none listed"
    document = dict(answer, part=part, allowed=False, why=f"{rule}. {host} has no exception; the relays: {relays}")
    if allows:
        e = max(allows, key=lambda e: e.expires or now)
        document["inactive_exception"] = dict(_exception(e), lapsed=e.lapsed)
        document["why"] += (f". Exception {e.id} ({e.address}) would allow it, but "
                            + ("it lapsed: the relay now carries what it was granted for" if e.lapsed
                               else f"it expired at {format_utc(e.expires)}"))
    return document


def explain(policy, targets, src, dst, port=25, now=None, listed=()):
    """The meaning (above), and for each switch in `targets` ({dpid: Target},
    the connected enforcing ones) what its flows do with the packet; switches
    in `listed` without a target are said to be not connected."""
    now = now or utc_now()
    document = meaning(policy, src, dst, port, now)
    switches = []
    for dpid in sorted(set(targets) | set(listed)):
        target = targets.get(dpid)
        listing = target.listing if target else None
        entry = {"dpid": f"{dpid:016x}", "name": listing.name if listing else None, "connected": target is not None}
        if target is None:
            switches.append(dict(entry, allowed=None, why="not connected"))
            continue
        spec = policy.switch_spec(dpid)
        outside = document["from"] == "outside"
        in_port = (min(spec.uplinks) if outside and spec.uplinks else CAMPUS_SIDE_PORT) if spec.by_port else CAMPUS_SIDE_PORT
        packet = Packet(in_port=in_port, src=src, dst=dst, ip_proto=IP_PROTO_TCP, dst_port=port)
        met = path(target.flows, packet, start=target.profile.table_ids[0])
        forward = {t.id for t in target.profile.tables if t.name == "forward"}
        deciding = next((r for r in reversed(met) if r.table not in forward), met[-1] if met else None)
        allowed = bool(met) and met[-1].instructions.output_normal
        meant = is_allowed(policy, dpid, packet, now)
        entry.update(in_port=in_port if spec.by_port else None, allowed=allowed, agrees_with_policy=allowed == meant,
                     flows=[to_ofctl(r) for r in met],
                     deciding_flow=None if deciding is None else {
                         "table": deciding.table, "priority": deciding.priority, "cookie": f"{deciding.cookie:#x}",
                         "ofctl": to_ofctl(deciding)})
        entry["_rule"] = deciding  # for the Ryu layer's counter read; not part of the answer
        switches.append(entry)
    document["switches"] = switches
    return document


def parse_question(src, dst, port):
    """(src, dst, port) from text; ValueError(field, message) naming what is wrong."""
    addresses = []
    for field, text in (("src", src), ("dst", dst)):
        try:
            addresses.append(netaddr.IPAddress(str(text or "").strip(), flags=netaddr.INET_PTON))
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise ValueError(field, f"{field}: {text!r} is not an IPv4 or IPv6 address") from None
    if addresses[0].version != addresses[1].version:
        raise ValueError("dst", "dst: src and dst must be of one family (IPv4 or IPv6)")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError("port", f"port: {str(port)[:24]!r} is not a whole number") from None
    if not 1 <= port <= 65535:
        raise ValueError("port", f"port: {port} is not a TCP port (1-65535)")
    return addresses[0], addresses[1], port


def _exception(e):
    return {"id": e.id, "address": str(e.address), "direction": e.direction.value, "reason": e.reason,
            "contact": e.contact, "expires": format_utc(e.expires), "source": e.source,
            **({"created_by": e.created_by} if e.created_by else {})}
