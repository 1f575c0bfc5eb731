"""Ryu app: enforce the campus SMTP border policy on OpenFlow 1.3 switches.

    SMTP_POLICY_FILE=/etc/smtp-border/policy.yaml ryu-manager ryu_apps.smtp_policy

The policy is compiled (smtp_border.compiler) and installed proactively when a
switch connects, replacing whatever the switch had in the tables the app owns
in one atomic bundle, then confirmed with a barrier. No flow sends packets to
the controller, and no flow times out, so the switch keeps enforcing while the
controller is away.
"""
import itertools
import os
import sys

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, HANDSHAKE_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from ryu_apps import openflow
from smtp_border.compiler import compile_switch
from smtp_border.policy import PolicyError, load_policy, utc_now

POLICY_FILE_ENV = "SMTP_POLICY_FILE"
DEFAULT_POLICY_FILE = "policy.yaml"
# How long a switch may take to confirm a change before we call it failed.
BARRIER_TIMEOUT = 30.0


class ChangeFailed(Exception):
    pass


class _PendingChange:
    """Messages sent to one switch, waiting for the barrier that confirms them."""

    def __init__(self, dpid, xids):
        self.dpid = dpid
        self.xids = set(xids)
        self.errors = []
        self.done = hub.Event()

    def fail(self, reason):
        self.errors.append(reason)
        self.done.set()


class SmtpPolicy(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy_file = os.environ.get(POLICY_FILE_ENV, DEFAULT_POLICY_FILE)
        try:
            self.policy = load_policy(self.policy_file)
        except PolicyError as err:
            # One line and a non-zero exit, not a traceback: this is the
            # operator's file, not our bug.
            sys.exit(f"smtp-border: {err}")
        self._log_policy()
        self.datapaths = {}  # dpid -> connected Datapath
        self.installed = {}  # dpid -> frozenset of FlowRule confirmed on the switch
        self._pending = {}  # (dpid, barrier xid) -> _PendingChange
        self._bundle_ids = itertools.count(1)
        # One change at a time, across all switches: changes never interleave.
        self._change_lock = hub.Semaphore(1)

    def _log_policy(self):
        p = self.policy
        now = utc_now()
        expired = [e for e in p.exceptions if not e.is_active(now)]
        if p.switches is None:
            where = "every switch, by addresses (no switches listed)"
        else:
            where = "; ".join(f"dpid {s.dpid:#x} uplinks {list(s.uplinks)}" for s in p.switches)
        self.logger.info(
            "smtp-border: policy %s: campus %s, smtp ports %s, %d gateway(s), %d exception(s) (%d expired); enforcing on %s",
            self.policy_file, ", ".join(map(str, p.campus)), list(p.smtp_ports),
            len(p.gateways), len(p.exceptions), len(expired), where,
        )
        for e in expired:
            self.logger.warning(
                "smtp-border: exception %s (%s) expired at %s and is not enforced",
                e.address, e.direction.value, e.expires.isoformat(),
            )

    # -- switch lifecycle -----------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            self.datapaths[dp.id] = dp
            # Waiting for the barrier needs this handler's thread free to
            # deliver the reply, so the sync runs in its own green thread.
            hub.spawn(self._sync_switch, dp)
        elif dp.id is not None and self.datapaths.get(dp.id) is dp:
            del self.datapaths[dp.id]
            self.installed.pop(dp.id, None)
            for change in self._changes_for(dp.id):
                change.fail("switch disconnected before confirming")
            self.logger.info("smtp-border: switch %016x disconnected; its flows stay in force", dp.id)

    def _sync_switch(self, dp):
        """Make the switch's owned tables exactly the compiled rules, atomically.

        Runs on every (re)connection and after a controller restart: flows left
        by an earlier run or policy are removed in the same bundle that adds the
        new ones, so no packet sees a table without the policy."""
        with self._change_lock:
            rules = compile_switch(self.policy, dp.id)
            role = "enforcing" if self.policy.switch_spec(dp.id) else "inside (forwarding only)"
            try:
                self._apply(dp, openflow.replace_all(dp, rules))
            except ChangeFailed as err:
                self.logger.error("smtp-border: switch %016x: policy NOT installed: %s", dp.id, err)
                return
            self.installed[dp.id] = rules
            self.logger.info(
                "smtp-border: switch %016x %s: %d flows installed in one bundle, confirmed by barrier",
                dp.id, role, len(rules),
            )

    def _apply(self, dp, messages):
        """Send messages to dp as one atomic bundle and wait for the barrier.

        Raises ChangeFailed if the switch reports an error for any of them or
        does not confirm in time."""
        parser = dp.ofproto_parser
        wrapped = openflow.bundle(dp, next(self._bundle_ids), messages)
        barrier = parser.OFPBarrierRequest(dp)
        for msg in wrapped + [barrier]:
            dp.set_xid(msg)
        key = (dp.id, barrier.xid)
        change = self._pending[key] = _PendingChange(dp.id, (m.xid for m in wrapped))
        try:
            for msg in wrapped + [barrier]:
                if not dp.send_msg(msg):
                    raise ChangeFailed("connection to the switch closed while sending")
            if not change.done.wait(timeout=BARRIER_TIMEOUT):
                raise ChangeFailed(f"no barrier reply within {BARRIER_TIMEOUT:.0f} s")
        finally:
            del self._pending[key]
        if change.errors:
            raise ChangeFailed(f"switch reported {len(change.errors)} error(s), first: {change.errors[0]}")

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev):
        change = self._pending.get((ev.msg.datapath.id, ev.msg.xid))
        if change is not None:
            change.done.set()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        msg = ev.msg
        description = openflow.describe_error(msg.datapath, msg)
        self.logger.error("smtp-border: OpenFlow error from switch %016x: %s", msg.datapath.id or 0, description)
        for change in self._changes_for(msg.datapath.id):
            if msg.xid in change.xids:
                change.errors.append(description)

    def _changes_for(self, dpid):
        return [c for c in list(self._pending.values()) if c.dpid == dpid]
