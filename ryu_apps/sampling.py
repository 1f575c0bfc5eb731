"""Blocked-attempt samples: the packet-ins the block flows send through the
audit meters (smtp_border/rules.py), recorded as attempts (who tried to send
mail, to whom, on which switch and port, under which clause).

Only from the live connection of an enforcing switch, from one of our block
flows (its cookie, in the table that holds them): a peer that opened an
OpenFlow connection must not write audit records accusing a host. Packet-ins
over the connection's limit are dropped before anything is parsed, and one
whose payload does not parse is counted, never a traceback
(ryu_apps/channel.py says each once a log interval).
"""
from ryu_apps.framework import ipv4, ipv6, packet, tcp
from smtp_border.audit import SAMPLED, attempt_from_sample
from smtp_border.policy import utc_now
from smtp_border.rules import cookie_clause


def record(app, channel, msg):
    dp = msg.datapath
    if channel is not None:
        channel.heard()
        if not channel.allow("packet_ins"):
            channel.flooding("packet_ins")
            return
    agent = app.switches.get(dp.id)
    if (agent is None or agent.dp is not dp or not app.border.enforcing(dp.id)
            or cookie_clause(msg.cookie) not in SAMPLED or agent.choice is None
            or msg.table_id != agent.choice.profile.exception_table):
        app.counters[("samples_refused", dp.id)] += 1
        return
    app.counters[("samples", dp.id)] += 1
    try:
        sample = packet.Packet(msg.data)
        ip = sample.get_protocol(ipv4.ipv4) or sample.get_protocol(ipv6.ipv6)
        segment = sample.get_protocol(tcp.tcp)
    except Exception:  # a payload no switch of ours would send
        app.counters[("samples_unreadable", dp.id)] += 1
        if channel is not None:
            channel.note("unreadable_samples", "packet-in with a block cookie whose payload does not parse")
        return
    # A connection attempt is a SYN; retransmitted SYNs are attempts too.
    if ip is None or segment is None or not segment.has_flags(tcp.TCP_SYN) or segment.has_flags(tcp.TCP_ACK):
        return
    attempt = attempt_from_sample(
        cookie_clause(msg.cookie), dp.id, msg.match.get("in_port"), ip.src, ip.dst,
        segment.src_port, segment.dst_port, utc_now(),
    )
    if attempt is not None and app.audit.record(attempt):
        app.counters[("attempts", attempt.direction)] += 1
        app.logger.info(
            "smtp-border: blocked %s SMTP %s:%d -> %s:%d on switch %s port %s (%s)",
            attempt.direction, attempt.src, attempt.src_port, attempt.dst, attempt.dst_port,
            attempt.switch, attempt.in_port, attempt.clause,
        )
