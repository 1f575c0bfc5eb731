"""What an agent reads of its switch, and sets before any flow: its flows
(counts first, every flow when asked), the block flows' counters, the
meters' statistics; its capabilities (the probe: its profile, from the
core), its fragment handling and the audit meters.

A mixin of ryu_apps/agent.Agent: it uses the agent's switch and channel.
"""
import logging
import time

from ryu_apps import openflow
from ryu_apps.channel import SwitchFailed
from smtp_border.audit import DIRECTIONS
from smtp_border.pipeline import Capabilities
from smtp_border.rules import AUDIT_METERS, COOKIE_APP_TAG, Clause, cookie_clause, with_version

LOG = logging.getLogger("smtp_border.agent")

# The drop flows, clauses 0x20-0x23 (Part 1, Part 2, unclassifiable; and the
# few transit flows, skipped): cookie and mask for reading them alone.
BLOCK_COOKIE = (COOKIE_APP_TAG << 48) | (Clause.PART1_BLOCK << 40)
BLOCK_COOKIE_MASK = (0xFFFF << 48) | (0xFC << 40)
# How a switch treats IP fragments (the OFPC_FRAG_* bits of its config).
# OpenFlow's default, "normal", reads the ports of every fragment as 0, the
# first included: an SMTP SYN sent as a first fragment would look like TCP to
# port 0. Open vSwitch's "nx-match" (a Nicira value) reads the ports of a
# first fragment and leaves 0 only to later ones, which carry none: what the
# policy's flows assume (docs/security.md). A switch that will not take it
# still fails closed: its first TCP fragments meet the port-0 drop.
FRAG_NX_MATCH = 3


class Readings:
    def read_flows(self, dump=False):
        """The switch's flows in the owned tables: (FlowRules, foreign flows).
        Flows with our cookie in other tables (left by another profile) are
        foreign too. Empty tables (a fresh switch) are told by their counts,
        without a dump."""
        tables = self.tables
        if not dump:
            requests = [self._aggregate(table) for table in tables]
            replies = self.channel.exchange([], requests)
            if not any(replies[r.xid][0].flow_count for r in requests):
                return set(), []
        rules, foreign = set(), []
        entries = self.switch_flows()
        for entry in entries:
            if entry.table_id not in tables:
                if cookie_clause(entry.cookie) is not None:
                    foreign.append(openflow.Foreign(entry))
                continue
            (foreign.append(openflow.Foreign(entry)) if entry.rule is None else rules.add(entry.rule))
        self.observe_blocks(entries)
        return rules, foreign

    def read_counters_before(self, diff):
        """Before a change replaces or removes block flows, read their counters."""
        if any(cookie_clause(r.cookie) in DIRECTIONS for r in diff.delete + diff.add):
            self.read_block_counters()

    def read_block_counters(self, timeout=None):
        request = openflow.flow_stats_request(self.dp, BLOCK_COOKIE, BLOCK_COOKIE_MASK)
        replies = self.channel.exchange([], [request], timeout=timeout)
        self.observe_blocks([e for body in replies[request.xid] for e in body.entries()])

    def observe_blocks(self, entries):
        tables = self.tables if self.choice is not None else ()
        readings = []
        for entry in entries:
            clause = cookie_clause(entry.cookie)
            if clause in DIRECTIONS and entry.table_id in tables:
                key = (entry.table_id, entry.priority, entry.match)
                readings.append((key, DIRECTIONS[clause][0], entry.packet_count, entry.byte_count))
        self.app.block_counters.observe(self.dpid, readings)

    def counters_of(self, rule, timeout=None):
        """(packets, bytes) of the switch's flow that is `rule` (in whichever
        policy-table version it holds it), read by its cookie; None if the
        switch does not hold it."""
        request = openflow.flow_stats_request(self.dp, rule.cookie, 0xFFFFFFFFFFFFFFFF)
        replies = self.channel.exchange([], [request], timeout=timeout)
        for entry in (e for body in replies[request.xid] for e in body.entries()):
            if entry.rule is not None and with_version(entry.rule, 0) == with_version(rule, 0):
                return entry.packet_count, entry.byte_count
        return None

    def switch_flows(self, timeout=None):
        """Every flow on the switch, as ryu_apps.wire.FlowEntry."""
        request = openflow.flow_stats_request(self.dp)
        return [entry for body in self.channel.exchange([], [request], timeout=timeout)[request.xid]
                for entry in body.entries()]

    def meter_stats(self, timeout=None):
        """OFPMeterStats of the audit meters (empty without them)."""
        dp = self.dp
        request = dp.ofproto_parser.OFPMeterStatsRequest(dp, 0, dp.ofproto.OFPM_ALL)
        return self.channel.exchange([], [request], timeout=timeout)[request.xid]

    # -- what it needs before flows --------------------------------------------------

    def probe(self):
        """Give a switch that just connected its profile
        (smtp_border/pipeline.py) from what it can do: table features and
        meter features (its table count came with its features reply). Asked
        once; a switch that reconnects with the same features reply, after an
        install it confirmed, gets what it said last time (Open vSwitch's
        table features are 1.26 MB and 20-30 ms of every connection). A
        switch that refuses a request simply does not have that to offer;
        one that does not answer, or answers nonsense, fails the attempt,
        which is retried."""
        started = time.monotonic()
        remembered = self.app.probes.get(self.dpid)
        if remembered is not None and self.features is not None and remembered[0] == self.features:
            capabilities, how = remembered[1], "remembered from its last connection, same features reply"
            self.recheck = True  # asked again once its flows are in: recheck_probe()
        else:
            capabilities, how = self._ask_capabilities(), "asked"
        self.capabilities = capabilities
        self.choice = self.app.border.probed(self.dpid, capabilities)
        self.channel.reply_limit = self.channel.limits.max_reply_bytes(len(self.target().flows))
        self.steps["probe"] = (time.monotonic() - started) * 1000
        LOG.info("smtp-border: switch %016x: pipeline %s, %s; budget %s (%.1f ms to probe: %s)",
                 self.dpid, self.choice.profile.describe(), "; ".join(self.choice.reasons),
                 "none known" if self.choice.budget is None
                 else f"{self.choice.budget} entries ({self.choice.budget_source})", self.steps["probe"], how)

    def recheck_probe(self):
        """After an install on a remembered probe: ask the switch now, off the
        install's path. A switch whose tables changed under the same features
        reply (an operator set a flow limit; a firmware upgrade) gets its
        profile and budget anew, and is reconciled to them."""
        self.recheck = False
        try:
            capabilities = self._ask_capabilities()
        except SwitchFailed:
            # No answer, or nonsense: what it said before cannot be trusted
            # either. Forget it; the switch is probed as on a first connection.
            self.forget_probe()
            self.choice, self.in_sync = None, False
            raise
        if capabilities == self.capabilities:
            return
        LOG.warning("smtp-border: switch %016x: its tables changed since its last connection (same features reply);"
                    " probed again", self.dpid)
        self.capabilities = capabilities
        self.choice = self.app.border.probed(self.dpid, capabilities)
        self.app.probes[self.dpid] = (self.features, capabilities)
        self.in_sync, self.pending = False, "its tables changed since its last connection: reconciling"

    def remember_probe(self):
        """After an install the switch confirmed: keep its probe for its next
        connection (enforcing switches only: one entry per listed switch)."""
        if self.capabilities is not None and self.features is not None and self.app.border.enforcing(self.dpid):
            self.app.probes[self.dpid] = (self.features, self.capabilities)

    def forget_probe(self):
        """It refused something: ask it again on its next connection."""
        self.app.probes.pop(self.dpid, None)

    def _ask_capabilities(self):
        dp = self.dp
        tables = max_meters = None
        features, meters = openflow.table_features_request(dp), openflow.meter_features_request(dp)
        try:  # both at once: one round trip for a switch that answers both, as most do
            replies = self.channel.exchange([], [features, meters])
            tables = _features(replies[features.xid])
            max_meters = replies[meters.xid][0].max_meter if replies[meters.xid] else 0
        except SwitchFailed as err:
            if not err.codes:
                raise
            for request in (openflow.table_features_request(dp), openflow.meter_features_request(dp)):
                try:
                    reply = self.channel.exchange([], [request])[request.xid]
                except SwitchFailed as err:
                    if not err.codes:
                        raise
                    reply = None  # refused: the switch does not have it to offer
                if isinstance(request, dp.ofproto_parser.OFPTableFeaturesStatsRequest):
                    tables = None if reply is None else _features(reply)
                else:
                    max_meters = reply[0].max_meter if reply else 0
        return Capabilities(self.n_tables, tables or None, max_meters)

    def ensure_fragments(self):
        """An enforcing switch must read the ports of first fragments
        (FRAG_NX_MATCH) before its flows are trusted to judge them."""
        dp = self.dp
        if self.fragments is not None or not self.app.border.enforcing(self.dpid):
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        request = parser.OFPGetConfigRequest(dp)
        config = self.channel.exchange([], [request])[request.xid][0]
        if config.flags & ofp.OFPC_FRAG_MASK != FRAG_NX_MATCH:
            flags = (config.flags & ~ofp.OFPC_FRAG_MASK) | FRAG_NX_MATCH
            check = parser.OFPGetConfigRequest(dp)
            try:
                replies = self.channel.exchange([parser.OFPSetConfig(dp, flags, config.miss_send_len)], [check])
                config = replies[check.xid][0]
            except SwitchFailed as err:
                LOG.error("smtp-border: switch %016x refuses Nicira fragment handling: %s", self.dpid, err)
        if config.flags & ofp.OFPC_FRAG_MASK == FRAG_NX_MATCH:
            self.fragments = "nx-match"
            return
        self.fragments = (f"mode {config.flags & ofp.OFPC_FRAG_MASK}: first TCP fragments are dropped, "
                          "fragmented SMTP or not")
        LOG.warning("smtp-border: switch %016x keeps fragment handling %s", self.dpid, self.fragments)

    def ensure_meter(self):
        """The audit meters (inbound, outbound) must exist, at the policy's
        rate, before any flow uses them."""
        dp = self.dp
        policy = self.app.policy
        rate = policy.audit.sample_rate
        if (not rate or not self.app.border.enforcing(self.dpid) or self.meter_rate == rate
                or not self.choice.profile.meters):
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        # Ask first rather than try and fail: an error here would read like a
        # fault. (Asking for one unknown meter is an error too, so ask for all.)
        request = parser.OFPMeterConfigStatsRequest(dp, 0, ofp.OFPM_ALL)
        existing = {m.meter_id for m in self.channel.exchange([], [request])[request.xid]}
        mods = [openflow.set_meter(dp, meter, rate, ofp.OFPMC_MODIFY if meter in existing else ofp.OFPMC_ADD)
                for meter in AUDIT_METERS]
        self.channel.exchange(mods, [self._barrier()])
        self.meter_rate = rate


def _features(reply):
    """The table features a switch sent, or SwitchFailed naming what is wrong
    with them: one line, retried with backoff, never a traceback per try."""
    try:
        return openflow.table_features(reply)
    except Exception as err:  # a malformed reply from the switch, not our bug
        raise SwitchFailed(f"its table features reply cannot be read ({type(err).__name__}: {err})") from None
