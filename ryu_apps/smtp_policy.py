"""Ryu app: enforce the campus SMTP border policy on OpenFlow 1.3 switches.

    SMTP_POLICY_FILE=/etc/smtp-border/policy.yaml ryu-manager ryu_apps.smtp_policy

This file is the wiring (docs/architecture.md): it makes the rooms and
hands the framework's events to them.

* smtp_border/border.py, the core, decides what every switch must hold;
* ryu_apps/channel.py: one Channel per connection (request and reply,
  liveness, limits on what a peer may send);
* ryu_apps/agent.py: one Agent per switch, with its own green thread, that
  keeps its switch at the core's target (probe, reconcile, push, audit,
  repair, retry);
* ryu_apps/replicas.py: several controllers on etcd;
* ryu_apps/rest.py and ryu_apps/metrics.py, through ryu_apps/facade.py.

A change (REST, reload, expiry, another replica) is committed in the core
under a short lock with no switch I/O under it, handed to every agent,
and answered after at most `Timing.change_deadline` with which listed
switches enforce it and which are pending, and why. A switch that missed a
deadline is not waited for again until it has caught up: one silent switch
costs one deadline, not one per change. No flow times out, so a switch
keeps enforcing while the controller is away.
"""
import collections
import os
import socket
import sys
import time
import weakref

from prometheus_client import Histogram

from ryu_apps import facade, history, logs, openflow, rest, sampling, tls
from ryu_apps.agent import Agent, Timing
from ryu_apps.channel import Channel, Limits, SwitchFailed
from ryu_apps.framework import (
    CONFIG_DISPATCHER, DEAD_DISPATCHER, HANDSHAKE_DISPATCHER, MAIN_DISPATCHER, App, hub, ofp_event, ofproto_v1_3,
    set_ev_cls,
)
from ryu_apps.replicas import Replicas
from smtp_border.audit import AuditLog, default_log_path
from smtp_border.border import Border
from smtp_border.counters import BlockCounters
from smtp_border.etcdstate import ETCD_ENV, EtcdState, Mastership
from smtp_border.policy import PolicyError, cyclic_gc_paused, utc_now
from smtp_border.state import StateUnavailable
from smtp_border.trail import Actor, trail_for

POLICY_FILE_ENV = "SMTP_POLICY_FILE"
STATE_FILE_ENV = "SMTP_POLICY_STATE"
# "auto" (default): use ONF bundles, and fall back to ordered flow mods for a
# switch that refuses them. "off": never use bundles.
BUNDLES_ENV = "SMTP_POLICY_BUNDLES"
REPLICA_ENV = "SMTP_POLICY_REPLICA"  # this controller's name among several (default host:pid)
AUDIT_LOG_ENV = "SMTP_POLICY_AUDIT_LOG"  # overrides audit.log of the policy
DEFAULT_POLICY_FILE = "policy.yaml"
# How often expiry times are checked: an expired exception stops being
# enforced within this many seconds.
EXPIRY_CHECK_SECONDS = 10.0
# How often every connection's liveness is looked at (ryu_apps/channel.py).
LIVENESS_CHECK_SECONDS = 1.0


class SmtpPolicy(App):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, timing=None, limits=None, expiry_seconds=EXPIRY_CHECK_SECONDS, **kwargs):
        super().__init__(*args, **kwargs)
        logs.configure(logger=self.logger)  # SMTP_POLICY_LOG_FORMAT; SIGTERM is said
        self.hub = hub
        self.timing = timing or Timing.from_environment()
        self.limits = limits or Limits()
        shared = None
        try:
            if os.environ.get(ETCD_ENV):
                shared = EtcdState(os.environ[ETCD_ENV])  # several controllers, one policy (docs/ha.md)
            self.border = Border(
                os.environ.get(POLICY_FILE_ENV, DEFAULT_POLICY_FILE), os.environ.get(STATE_FILE_ENV) or None,
                state=shared,
            )
        except (PolicyError, ValueError) as err:
            # One line and a non-zero exit, not a traceback: this is the
            # operator's file, not our bug.
            sys.exit(f"smtp-border: {err}")
        except StateUnavailable as err:
            sys.exit(f"smtp-border: {err}: start etcd, or leave {ETCD_ENV} unset to keep API exceptions in the"
                     " local journal")
        self.store = self.border.store
        self.trail = trail_for(self.store.policy_file)  # who changed what (smtp_border/trail.py)
        facade.log_policy(self)
        self.audit = AuditLog(
            os.environ.get(AUDIT_LOG_ENV) or default_log_path(self.store.policy_file, self.policy.audit.log)
        )
        self.logger.info("smtp-border: blocked attempts are logged to %s", self.audit.path)
        # reloads, reload_failures, samples[dpid], repairs[dpid], drift[kind], push_failures[dpid]
        self.counters = collections.Counter()
        # Registered in the app's registry by ryu_apps/metrics.py.
        self.change_seconds = Histogram(
            "smtp_border_change_seconds", "Changes, from the request to the answer (every listed switch enforcing"
            " it, or found pending), by where they came from (api: this controller's REST API; replica: another"
            " controller, through etcd; expiry: exceptions whose time came) and result (enforced, pending, refused:"
            " invalid, conflicting or not saved; nothing changed).", ["source", "result"], registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.block_counters = BlockCounters()
        self.last_change = time.time()
        self.switches = {}  # dpid -> Agent, for the live connection of each dpid
        self.channels = weakref.WeakKeyDictionary()  # Datapath -> Channel
        self._hello_at = weakref.WeakKeyDictionary()  # Datapath -> when its hello arrived
        # Datapath -> what its features reply said (n_tables, n_buffers, capabilities, auxiliary_id)
        self._features_of = weakref.WeakKeyDictionary()
        # dpid -> (features, Capabilities) of an enforcing switch's last probe,
        # kept across reconnections (Agent.probe); one entry per listed switch.
        self.probes = {}
        self.bundles_wanted = os.environ.get(BUNDLES_ENV, "auto").lower() != "off"
        self.changes = 0  # the number of the last change committed
        # Changes are committed one at a time: the core's work only, no switch I/O.
        self.change_lock = hub.Semaphore(1)
        self._start_api = rest.register(self)
        tls.install()  # before Ryu starts its OpenFlow server (after every app is made)
        openflow.install_flow_stats_reader()  # flow-stats replies read as bytes (ryu_apps/wire.py)
        hub.spawn(self._expiry_loop, expiry_seconds)
        hub.spawn(self._liveness_loop)
        hub.spawn(self._warm)
        self.mastership = None
        if shared is not None:
            self.logger.info("smtp-border: API exceptions are shared in %s", shared.path)
            replica = os.environ.get(REPLICA_ENV) or f"{socket.gethostname()}:{os.getpid()}"
            self.mastership = Mastership(shared, replica)
            self.logger.info("smtp-border: replica %s; each switch's master is chosen in etcd", replica)
            Replicas(self, shared, self.mastership).start()

    def start(self):
        """Called by the framework once every app is made: serve the REST API too."""
        thread = super().start()
        self.threads.append(self._start_api())
        return thread

    @property
    def policy(self):
        return self.border.policy

    def _warm(self):
        """The listed switches' flows compiled before they connect (Border.warm),
        once the app runs: core work under the change lock, no I/O."""
        started = time.monotonic()
        with self.change_lock:
            with cyclic_gc_paused():
                compiled = self.border.warm()
        if compiled:
            self.logger.info("smtp-border: flows of the listed switches compiled before they connect (%d profile(s),"
                             " %.1f ms)", compiled, (time.monotonic() - started) * 1000)

    # -- changes ----------------------------------------------------------------

    def change(self, make, confirm=True, source="api", actor=None, action="change"):
        """Apply one change: `make(border)` validates and saves it and returns
        an Outcome (or raises, and nothing changed; or None: nothing to do).
        It is committed under the change lock, which covers the core's work
        only; then every agent is handed its diff, and the answer waits for
        them up to the deadline. Returns (outcome, report): which listed
        switches enforce it and which are pending. `confirm`: read the
        change on switches another controller masters (for an answer; not
        for a change that came from that controller). Timed, from the lock's
        wait to the answer, into smtp_border_change_seconds. Each change
        and each refusal is one log line, each change one line of the trail,
        naming `actor` (ryu_apps/history.py)."""
        started = time.monotonic()
        try:
            with self.change_lock:
                outcome = make(self.border)
                if outcome is None:
                    return None, None
                self.changes += 1
                number = self.changes
                for dpid, agent in list(self.switches.items()):
                    agent.submit(number, outcome.diffs.get(dpid))
        except Exception as err:
            self.change_seconds.labels(source, "refused").observe(time.monotonic() - started)
            history.refused(actor, action, err)
            raise
        report = self._await(number, outcome, confirm, started + self.timing.change_deadline)
        self.change_seconds.labels(source, "pending" if report["pending"] else "enforced").observe(
            time.monotonic() - started)
        if not report["pending"]:
            self.last_change = time.time()
        history.recorded(self, actor, action, source, outcome, report)
        return outcome, report

    def _await(self, number, outcome, confirm, deadline):
        """Wait, until `deadline` at most, for the agents to hold change
        `number`. One that misses it is lagging: later changes report it
        pending at once, until it holds the latest change."""
        waits, seen = {}, {}
        for dpid, agent in list(self.switches.items()):
            diff = outcome.diffs.get(dpid)
            if agent.role == "slave":
                if diff:
                    agent.note_unseen(diff)
                    if confirm:  # read on the switch: its master delivers it (through etcd)
                        timeout = min(self.timing.confirm_seconds, max(0.0, deadline - time.monotonic()))
                        seen[dpid] = hub.spawn(agent.seen_on_switch, diff, timeout)
            elif not agent.lagging:
                waits[dpid] = agent.waiter(number)
        for dpid, event in waits.items():
            if not event.wait(timeout=max(0.0, deadline - time.monotonic())):
                agent = self.switches.get(dpid)
                if agent is not None and not agent.holds_change(number):
                    agent.lagging = True
        confirmed = {dpid for dpid, thread in seen.items() if thread.wait()}
        for dpid in confirmed:
            agent = self.switches.get(dpid)
            if agent is not None and not agent.unseen:
                agent.holds = True  # (earlier changes unseen: its audit reads them)
        return self.enforcement(number, confirmed)

    def enforcement(self, number=None, seen=()):
        """Which switches enforce the policy in force (change `number`, the
        latest by default) and which are pending, and why."""
        number = self.changes if number is None else number
        listed = self.border.listed()
        dpids = sorted(self.switches) if listed is None else listed
        enforced, pending, crashed = [], [], {}
        for dpid in dpids:
            agent = self.switches.get(dpid)
            name = self.border.listing(dpid).name
            if agent is None:
                pending.append({"dpid": f"{dpid:016x}", "name": name, "reason": "not connected", "connected": False})
            elif (agent.role == "slave" and (agent.holds or dpid in seen)) or agent.holds_change(number):
                enforced.append(f"{dpid:016x}")
            elif agent.role == "slave":
                pending.append({"dpid": f"{dpid:016x}", "name": name, "connected": True,
                                "reason": f"delivered by its master, controller {agent.master}"})
            else:
                reason = agent.pending or "not yet confirmed"
                if agent.lagging and agent.in_sync:
                    reason = "slow: still delivering an earlier change; its agent keeps at it"
                pending.append({"dpid": f"{dpid:016x}", "name": name, "connected": True, "reason": reason})
                if agent.crash:
                    crashed[dpid] = agent.crash
        return {"enforced": enforced, "pending": pending, "crashed": crashed}

    def expire(self, now):
        """Withdraw the exceptions whose time has come, as one change like any other."""
        outcome, report = self.change(lambda border: border.expire(now), confirm=False, source="expiry",
                                      actor=Actor("expiry"), action="expire")
        if outcome is None:
            return None
        for e in outcome.change.removed:
            self.logger.warning("smtp-border: exception %s %s (%s, %s) expired at %s; no longer enforced",
                                e.id, e.address, e.direction.value, e.reason, e.expires.isoformat())
        self.counters["expired"] += len(outcome.change.removed)
        return report

    def _expiry_loop(self, seconds):
        while True:
            hub.sleep(seconds)
            try:
                self.expire(utc_now())
            except Exception:  # one bad tick must not end expiry for good
                self.logger.exception("smtp-border: expiry check failed; trying again in %.0f s", seconds)

    def _liveness_loop(self):
        while True:
            hub.sleep(LIVENESS_CHECK_SECONDS)
            for channel in list(self.channels.values()):
                try:
                    channel.keep_alive()
                except Exception:  # one connection must not end liveness for the others
                    self.logger.exception("smtp-border: switch %s: liveness check failed", channel.name)

    # -- connections --------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPHello, HANDSHAKE_DISPATCHER)
    def _hello(self, ev):
        self._hello_at[ev.msg.datapath] = time.monotonic()

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        dp = ev.msg.datapath
        msg = ev.msg
        self._features_of[dp] = (msg.n_tables, msg.n_buffers, msg.capabilities, msg.auxiliary_id)
        self.channels[dp] = Channel(dp, hub, self.limits, name=f"{ev.msg.datapath_id:016x}")

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            if not tls.certificate_fits(self, dp):
                return
            current = self.switches.get(dp.id)
            if current is not None and current.dp is not dp:
                # Contested in its own thread: the echo's reply arrives on this one.
                hub.spawn(self._contest, current, dp)
            else:
                self._manage(dp)
            return
        channel = self.channels.pop(dp, None)
        if channel is not None:
            channel.fail_all("switch disconnected before answering")
        if dp.id is not None and dp.id in self.switches and self.switches[dp.id].dp is dp:
            agent = self.switches.pop(dp.id)
            agent.stopped()
            self.border.disconnected(dp.id)
            if self.mastership is not None and agent.role == "master":
                hub.spawn(self.mastership.release, dp.id, agent.generation)
            self.logger.info("smtp-border: switch %016x disconnected; its flows stay in force", dp.id)

    def _channel(self, dp):
        channel = self.channels.get(dp)
        if channel is None:
            channel = self.channels[dp] = Channel(dp, hub, self.limits)
        return channel

    def _manage(self, dp):
        allowed = self.border.listing(dp.id).bundles_allowed
        agent = Agent(self, dp, self._channel(dp), self.bundles_wanted and allowed,
                      hello_at=self._hello_at.pop(dp, None), features=self._features_of.get(dp))
        self.switches[dp.id] = agent
        agent.start()

    def _contest(self, current, newcomer):
        """A second connection claims a dpid that is connected. Any TCP peer
        can claim any dpid, so the one already connected keeps it if it is
        alive (answers an echo within Limits.echo_timeout): the newcomer is closed,
        logged and counted. If it does not answer, it was a dead connection
        (a switch that reconnected before its old TCP connection timed out):
        the newcomer takes over and the old one is closed."""
        try:
            request = current.dp.ofproto_parser.OFPEchoRequest(current.dp, data=b"smtp-border")
            current.channel.exchange([], [request], timeout=self.limits.echo_timeout)
            alive = True
        except SwitchFailed:
            alive = False
        if alive and self.switches.get(current.dpid) is current:
            self.counters[("duplicate_dpid_refused", newcomer.id)] += 1
            self.logger.warning(
                "smtp-border: a second connection from %s claims dpid %016x, which is connected from %s and"
                " answers: the new connection is closed", tls.peer_of(newcomer), newcomer.id, tls.peer_of(current.dp),
            )
            newcomer.close()
            return
        self.logger.warning(
            "smtp-border: switch %016x connected again from %s; the old connection from %s does not answer and"
            " is closed", newcomer.id, tls.peer_of(newcomer), tls.peer_of(current.dp),
        )
        self._manage(newcomer)
        current.stopped()
        current.dp.close()

    # -- what switches send: to their channel -------------------------------------

    @set_ev_cls([ofp_event.EventOFPBarrierReply, ofp_event.EventOFPEchoReply, ofp_event.EventOFPRoleReply,
                 ofp_event.EventOFPGetConfigReply], MAIN_DISPATCHER)
    def _reply(self, ev):
        channel = self.channels.get(ev.msg.datapath)
        if channel is not None:
            channel.answered(ev.msg)

    @set_ev_cls(
        [ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPMeterConfigStatsReply, ofp_event.EventOFPMeterStatsReply,
         ofp_event.EventOFPAggregateStatsReply, ofp_event.EventOFPTableFeaturesStatsReply,
         ofp_event.EventOFPMeterFeaturesStatsReply],
        MAIN_DISPATCHER,
    )
    def _multipart_reply(self, ev):
        msg = ev.msg
        channel = self.channels.get(msg.datapath)
        if channel is not None:
            channel.multipart(msg, msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE)

    @set_ev_cls(ofp_event.EventOFPEchoRequest, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _echo_request(self, ev):
        """The framework answers echo requests; a peer that floods them is
        closed (a switch sends one every few seconds when idle)."""
        channel = self.channels.get(ev.msg.datapath)
        if channel is not None:
            channel.heard()
            if not channel.allow("echoes"):
                channel.flooding("echoes")

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        """A metered sample of a blocked packet (ryu_apps/sampling.py)."""
        sampling.record(self, self.channels.get(ev.msg.datapath), ev.msg)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        msg = ev.msg
        channel = self.channels.get(msg.datapath)
        if channel is None:
            self.logger.error("smtp-border: OpenFlow error from a switch still connecting: %s",
                              openflow.describe_error(msg.datapath, msg))
            return
        description = channel.error(msg, lambda m: openflow.describe_error(m.datapath, m))
        if description is not None:
            self.logger.error("smtp-border: OpenFlow error from switch %016x: %s", msg.datapath.id or 0, description)
        elif channel.dropped["errors"]:
            channel.flooding("errors")
