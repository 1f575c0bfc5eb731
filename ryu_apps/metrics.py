"""Prometheus metrics, gathered when Prometheus scrapes.

Blocked packets and bytes come from the flow counters of the drop flows, so
they are exact, and they never decrease: what flows that were replaced or
removed had counted is kept (smtp_border/counters.py). Audit samples are what
reached the controller through the meter, and samples dropped are the
meter's own count of what it held back.
"""
import collections
import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ryu_apps import facade, framework, tls
from smtp_border.policy import utc_now
from smtp_border.rules import AUDIT_METERS
from smtp_border.version import python_version, version

TOP_HOSTS = 10  # per direction: a bounded number of series
TOP_WINDOW = datetime.timedelta(hours=1)
EXPIRING_DAYS = 30  # as `smtp-border mailservers --expiring`
EXPIRING = datetime.timedelta(days=EXPIRING_DAYS)


class PolicyCollector:
    def __init__(self, app):
        self.app = app

    def collect(self):
        app = self.app
        dropped = CounterMetricFamily(
            "smtp_border_audit_samples_dropped", "Blocked-packet samples held back by the audit meters, by direction.",
            labels=["switch", "direction"],
        )
        for dpid, meters in facade.read_counters(app).items():  # at once, each within a deadline
            for meter in meters:
                if meter.meter_id in AUDIT_METERS:
                    dropped.add_metric([f"{dpid:016x}", AUDIT_METERS[meter.meter_id]],
                                       sum(band.packet_band_count for band in meter.band_stats))
        packets = CounterMetricFamily(
            "smtp_border_blocked_packets", "Packets dropped by the policy (switch flow counters), by direction: inbound (Part 1), outbound "
            "(Part 2), or unclassifiable (a packet whose SMTP port the switch cannot see).",
            labels=["switch", "direction"],
        )
        octets = CounterMetricFamily(
            "smtp_border_blocked_bytes", "Bytes dropped by the policy (switch flow counters), by direction: inbound (Part 1), outbound "
            "(Part 2), or unclassifiable (a packet whose SMTP port the switch cannot see).",
            labels=["switch", "direction"],
        )
        for (dpid, direction), (n_packets, n_bytes) in sorted(app.block_counters.totals().items()):
            packets.add_metric([f"{dpid:016x}", direction], n_packets)
            octets.add_metric([f"{dpid:016x}", direction], n_bytes)
        yield packets
        yield octets
        yield dropped

        by_switch = {
            "samples": CounterMetricFamily(
                "smtp_border_audit_samples", "Blocked-packet samples received by the controller.", labels=["switch"]),
            "repairs": CounterMetricFamily(
                "smtp_border_drift_repairs", "Times an audit found a switch's flows changed behind the controller's"
                " back and repaired them.", labels=["switch"]),
            "push_failures": CounterMetricFamily(
                "smtp_border_push_failures", "Changes a connected switch did not confirm (then retried).",
                labels=["switch"]),
            "samples_refused": CounterMetricFamily(
                "smtp_border_audit_samples_refused", "Packet-ins not recorded: not from the live connection of an"
                " enforcing switch, or not from one of our block flows.", labels=["switch"]),
            "certificate_refused": CounterMetricFamily(
                "smtp_border_certificate_refused", "Connections closed because they claimed a dpid pinned to"
                " another certificate.", labels=["switch"]),
            "duplicate_dpid_refused": CounterMetricFamily(
                "smtp_border_duplicate_dpid_refused", "Connections closed because they claimed the dpid of a live"
                " switch.", labels=["switch"]),
        }
        attempts = CounterMetricFamily(
            "smtp_border_blocked_attempts", "Blocked connection attempts recorded from the samples (one per"
            " connection: retransmitted SYNs are not counted again), by direction: inbound is Part 1, outbound"
            " Part 2. Capped by the audit meters; smtp_border_blocked_packets is exact.", labels=["direction"])
        for direction in ("inbound", "outbound"):
            attempts.add_metric([direction], app.counters[("attempts", direction)])
        yield attempts
        top = GaugeMetricFamily(
            "smtp_border_top_blocked_hosts", f"Blocked attempts in the last hour of the {TOP_HOSTS} hosts with the"
            " most, by direction: outbound, campus hosts trying to send mail directly (an infected host or an"
            " unregistered mail server); inbound, outside sources.", labels=["direction", "address"])
        ranking = app.audit.top(utc_now() - TOP_WINDOW, TOP_HOSTS)
        for direction in ("inbound", "outbound"):
            for entry in ranking[direction]:
                top.add_metric([direction, entry["address"]], entry["attempts"])
        yield top
        drift = CounterMetricFamily(
            "smtp_border_drift_flows", "Flows found missing, extra or changed by audits (then repaired).",
            labels=["kind"],
        )
        for key, count in sorted(app.counters.items(), key=str):
            if isinstance(key, tuple) and key[0] in by_switch:
                by_switch[key[0]].add_metric([f"{key[1]:016x}"], count)
            elif isinstance(key, tuple) and key[0] == "drift":
                drift.add_metric([key[1]], count)
        yield from by_switch.values()
        yield drift

        exceptions = GaugeMetricFamily(
            "smtp_border_exceptions", "Exceptions in force, by direction and by where they come from.",
            labels=["direction", "source"],
        )
        counts = collections.Counter((e.direction.value, e.source) for e in app.policy.active_exceptions(utc_now()))
        for (direction, source), count in sorted(counts.items()):
            exceptions.add_metric([direction, source], count)
        yield exceptions
        now = utc_now()
        expiry = GaugeMetricFamily(
            "smtp_border_exception_expiry_timestamp_seconds", "When an exception in force expires (Unix time), for"
            " whoever granted it to hear before the host is cut off.",
            labels=["id", "address", "direction", "contact"])
        for e in app.policy.exceptions:
            if e.expires is not None and e.is_active(now):
                expiry.add_metric([e.id, str(e.address), e.direction.value, e.contact or ""], e.expires.timestamp())
        yield expiry
        yield GaugeMetricFamily(
            "smtp_border_exceptions_expiring_soon", f"Exceptions in force that expire within {EXPIRING_DAYS} days.",
            value=sum(e.expires is not None and e.is_active(now) and e.expires - now <= EXPIRING for e in app.policy.exceptions))
        review = app.policy.for_review()
        yield GaugeMetricFamily(
            "smtp_border_exceptions_for_review", "Part 2 message-size grants the relay now carries (its"
            " max_message_size reaches what they need): granted until this changes, so for review.",
            value=sum(not e.lapsed for e, _ in review))
        yield GaugeMetricFamily(
            "smtp_border_exceptions_lapsed", "Part 2 message-size grants not in force because the relay now carries"
            " what they need (part2_relay_suffices: lapse).", value=sum(e.lapsed for e, _ in review))
        yield GaugeMetricFamily("smtp_border_exceptions_quarantined",
                                "API exceptions kept but not enforced because policy.yaml contradicts them.",
                                value=len(app.store.quarantined))

        in_sync = GaugeMetricFamily(
            "smtp_border_switch_in_sync", "1 if the switch is connected and holds exactly the policy in force.",
            labels=["switch"],
        )
        report = app.enforcement()
        for dpid in report["enforced"]:
            in_sync.add_metric([dpid], 1)
        for pending in report["pending"]:
            in_sync.add_metric([pending["dpid"]], 0)
        yield in_sync
        needed = GaugeMetricFamily(
            "smtp_border_table_entries", "Entries the policy takes in the table of a connected switch that holds its"
            " exceptions (IPv6 flows counted as the switch's ipv6_entry_cost), by switch and table.",
            labels=["switch", "table"])
        budget = GaugeMetricFamily(
            "smtp_border_table_budget", "Entries available in that table (switches[].table_size, or the switch's"
            " table features); absent when unknown. A change that would exceed it is refused.",
            labels=["switch", "table"])
        for dpid, switch in sorted(app.switches.items()):
            if switch.choice is None:
                continue
            entries, available, choice = app.border.budget(dpid)
            labels = [f"{dpid:016x}", str(choice.profile.exception_table)]
            needed.add_metric(labels, entries)
            if available is not None:
                budget.add_metric(labels, available)
        yield needed
        yield budget
        yield GaugeMetricFamily("smtp_border_switches_connected", "Switches connected to the controller.",
                                value=len(app.switches))
        channel = CounterMetricFamily(
            "smtp_border_channel_dropped", "Messages from a connection the controller did not use, by kind: errors,"
            " echoes and packet-ins over their rate limit, unreadable samples, multipart replies over the size"
            " limit (ryu_apps/channel.py). Connected switches only.", labels=["switch", "kind"])
        for chan in list(app.channels.values()):
            for kind, count in sorted(chan.dropped.items()):
                channel.add_metric([chan.name, kind], count)
        yield channel
        yield CounterMetricFamily("smtp_border_policy_reloads", "Successful policy reloads.",
                                  value=app.counters["reloads"])
        yield CounterMetricFamily("smtp_border_policy_reload_failures", "Reloads refused because the file was invalid.",
                                  value=app.counters["reload_failures"])
        yield CounterMetricFamily("smtp_border_exceptions_expired", "Exceptions withdrawn because their time came.",
                                  value=app.counters["expired"])
        yield CounterMetricFamily("smtp_border_openflow_tls_refused",
                                  "OpenFlow TLS handshakes refused (no certificate from the campus CA, or no TLS).",
                                  value=tls.refused)
        build = GaugeMetricFamily("smtp_border_build_info", "The release running, its framework and Python (always 1).",
                                  labels=["version", "framework", "framework_version", "python"])
        build.add_metric([version(), framework.NAME, framework.VERSION, python_version()], 1)
        yield build
        yield GaugeMetricFamily("smtp_border_last_change_timestamp_seconds",
                                "When the policy in force last reached every listed switch (Unix time).",
                                value=app.last_change)


def registry_for(app):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PolicyCollector(app))
    registry.register(app.change_seconds)
    return registry
