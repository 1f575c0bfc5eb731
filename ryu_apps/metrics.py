"""Prometheus metrics, gathered from the switches when Prometheus scrapes.

Blocked packets and bytes are the flow counters of the drop flows, so they
are exact; audit samples are what reached the controller through the meter,
and samples dropped are the meter's own count of what it held back.
"""
import collections

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from smtp_border.audit import DIRECTIONS
from smtp_border.policy import utc_now
from smtp_border.rules import cookie_clause


class PolicyCollector:
    def __init__(self, app):
        self.app = app

    def collect(self):
        app = self.app
        packets = CounterMetricFamily(
            "smtp_border_blocked_packets", "Packets to an SMTP port dropped by the policy (switch flow counters).",
            labels=["switch", "direction"],
        )
        octets = CounterMetricFamily(
            "smtp_border_blocked_bytes", "Bytes to an SMTP port dropped by the policy (switch flow counters).",
            labels=["switch", "direction"],
        )
        dropped = CounterMetricFamily(
            "smtp_border_audit_samples_dropped", "Blocked-packet samples held back by the audit meter.",
            labels=["switch"],
        )
        for dpid, dp in sorted(app.datapaths.items()):
            if not app.policy.switch_spec(dpid):
                continue  # an inside switch blocks nothing
            switch = f"{dpid:016x}"
            totals = {direction: [0, 0] for direction, _ in DIRECTIONS.values()}
            try:
                flows = app.switch_flows(dp)
                meters = app.meter_stats(dp) if app.policy.audit.sample_rate else []
            except Exception as err:  # a switch that does not answer is left out of this scrape
                app.logger.warning("smtp-border: metrics: switch %s did not answer: %s", switch, err)
                continue
            for flow in flows:
                clause = cookie_clause(flow.cookie)
                if clause in DIRECTIONS:
                    total = totals[DIRECTIONS[clause][0]]
                    total[0] += flow.packet_count
                    total[1] += flow.byte_count
            for direction, (n_packets, n_bytes) in totals.items():
                packets.add_metric([switch, direction], n_packets)
                octets.add_metric([switch, direction], n_bytes)
            for meter in meters:
                dropped.add_metric([switch], sum(band.packet_band_count for band in meter.band_stats))
        yield packets
        yield octets
        yield dropped

        samples = CounterMetricFamily(
            "smtp_border_audit_samples", "Blocked-packet samples received by the controller.", labels=["switch"]
        )
        for key, count in sorted(app.counters.items(), key=str):
            if isinstance(key, tuple) and key[0] == "samples":
                samples.add_metric([f"{key[1]:016x}"], count)
        yield samples

        exceptions = GaugeMetricFamily(
            "smtp_border_exceptions", "Exceptions in force, by direction and by where they come from.",
            labels=["direction", "source"],
        )
        counts = collections.Counter((e.direction.value, e.source) for e in app.policy.active_exceptions(utc_now()))
        for (direction, source), count in sorted(counts.items()):
            exceptions.add_metric([direction, source], count)
        yield exceptions

        yield GaugeMetricFamily("smtp_border_switches_connected", "Switches connected to the controller.",
                                value=len(app.datapaths))
        yield CounterMetricFamily("smtp_border_policy_reloads", "Successful policy reloads.",
                                  value=app.counters["reloads"])
        yield CounterMetricFamily("smtp_border_policy_reload_failures", "Reloads refused because the file was invalid.",
                                  value=app.counters["reload_failures"])
        yield GaugeMetricFamily("smtp_border_last_change_timestamp_seconds",
                                "When the policy in force last reached every switch (Unix time).",
                                value=app.last_change)


def registry_for(app):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PolicyCollector(app))
    return registry
