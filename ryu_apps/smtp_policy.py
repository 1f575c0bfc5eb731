"""Ryu app: enforce the campus SMTP border policy on OpenFlow 1.3 switches.

    SMTP_POLICY_FILE=/etc/smtp-border/policy.yaml ryu-manager ryu_apps.smtp_policy

What every switch should hold is decided by the core (smtp_border.border:
the policy, the exception index, expiry, the desired flows of each switch);
this module only delivers it and reports back. For each connected switch it
keeps whether the switch is known to hold exactly its desired flows, and a
worker green thread that makes it so:

* on connection it first *probes* the switch (table features, meter
  features; smtp_border/pipeline.py chooses its profile: three tables, or
  one for switches without write-metadata or goto-table, with or without
  meters; docs/hardware.md), then reconciles;
* on connection, after a failed push (retried with exponential backoff up to
  RETRY_MAX seconds) and when an audit finds drift, it *reconciles*: reads
  the switch's flows, diffs them with the desired ones and sends the
  difference, in one atomic bundle (or, without bundles, in the order
  smtp_border/ordering.py proves safe), then a barrier. It never flushes: a
  switch that already holds the policy gets nothing and keeps its counters.
* every AUDIT_SECONDS (5) it *audits* an in-sync switch: the flow count of
  each owned table (three small aggregate requests) and, every
  FULL_AUDIT_EVERY audits (10 minutes), a full comparison; drift (flows
  deleted, added or changed behind the controller's back) is logged,
  counted and repaired.

A change (REST, reload, expiry) is sent as a diff to every in-sync switch at
once and answered with which listed switches enforce it and which are
pending, and why. No flow times out, so a switch keeps enforcing while the
controller is away.
"""
import collections
import contextlib
import hashlib
import itertools
import os
import socket
import sys
import time
import weakref

from prometheus_client import Histogram

from ryu_apps import openflow, rest, tls, wire
from ryu_apps.framework import (
    CONFIG_DISPATCHER, DEAD_DISPATCHER, HANDSHAKE_DISPATCHER, MAIN_DISPATCHER, App, hub, ipv4, ipv6,
    ofp_event, ofproto_v1_3, packet, set_ev_cls, tcp,
)
from smtp_border import ordering
from smtp_border.audit import DIRECTIONS, SAMPLED, AuditLog, attempt_from_sample, default_log_path
from smtp_border.border import Border
from smtp_border.counters import BlockCounters
from smtp_border.diff import diff_rules
from smtp_border.etcdstate import ETCD_ENV, EtcdState, Mastership
from smtp_border.policy import PolicyError, utc_now
from smtp_border.state import StateUnavailable
from smtp_border.policy import cyclic_gc_paused as gc_paused
from smtp_border.rules import (
    AUDIT_METERS, COOKIE_APP_TAG, Clause, cookie_clause, with_version,
)
from smtp_border.pipeline import MULTI, Capabilities

POLICY_FILE_ENV = "SMTP_POLICY_FILE"
STATE_FILE_ENV = "SMTP_POLICY_STATE"
# "auto" (default): use ONF bundles, and fall back to ordered flow mods for a
# switch that refuses them. "off": never use bundles.
BUNDLES_ENV = "SMTP_POLICY_BUNDLES"
REPLICA_ENV = "SMTP_POLICY_REPLICA"  # this controller's name among several (default host:pid)
AUDIT_LOG_ENV = "SMTP_POLICY_AUDIT_LOG"  # overrides audit.log of the policy
AUDIT_SECONDS_ENV = "SMTP_POLICY_AUDIT_SECONDS"
DEFAULT_POLICY_FILE = "policy.yaml"
# How long a switch may take to answer before we call the request failed.
REPLY_TIMEOUT = 30.0
# How often expiry times are checked: an expired exception stops being
# enforced within this many seconds.
EXPIRY_CHECK_SECONDS = 10.0
# How often an in-sync switch is audited (flow counts per owned table: three
# aggregate requests, 5.7 ms at 10,000 flows; docs/performance.md), and how
# many audits apart a full comparison is made, which also catches a flow
# changed in place: every 10 minutes, because reading back 10,000 flows
# costs about 0.55 s of controller CPU, half a core for 100 such switches
# if it were done every minute.
AUDIT_SECONDS = 5.0
FULL_AUDIT_EVERY = 120
# A slave reads the flows of changes its master delivered by their cookies,
# one request each, up to this many; more, and it reads every flow.
MAX_UNSEEN = 32
# How long a slave replica waits to see a change on a switch its master delivers.
CONFIRM_SECONDS = 5.0
# How often the etcd member a watch streams from is checked (its stream ends
# silently when it dies).
WATCH_CHECK_SECONDS = 2.0
# How long a connected switch has to answer an echo when a second
# connection claims its dpid.
ECHO_TIMEOUT = 3.0
# Retries of a switch that failed: 0.5 s, 1 s, 2 s, ... up to this.
RETRY_MIN = 0.5
RETRY_MAX = 30.0
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

class SwitchFailed(Exception):
    def __init__(self, message, codes=()):
        super().__init__(message)
        self.codes = codes  # (type, code) of each OpenFlow error


def _refuses_bundles(ofp, codes):
    unsupported = {ofp.OFPBRC_BAD_EXPERIMENTER, ofp.OFPBRC_BAD_EXP_TYPE, ofp.OFPBRC_BAD_TYPE}
    return any(t == ofp.OFPET_BAD_REQUEST and c in unsupported for t, c in codes)


class _Waiter:
    """Requests to one switch, waiting for their replies (barrier or multipart)."""

    def __init__(self, dp, requests, xids):
        self.dp = dp  # the connection: two may claim one dpid
        self.waiting = {r.xid for r in requests}  # replies still to come
        self.replies = {r.xid: [] for r in requests}
        self.xids = set(xids)  # messages whose errors count against this exchange
        self.errors = []
        self.codes = []
        self.done = hub.Event()

    def answered(self, xid):
        self.waiting.discard(xid)
        if not self.waiting:
            self.done.set()

    def fail(self, reason):
        self.errors.append(reason)
        self.done.set()


class Switch:
    """What the controller knows of one connected switch."""

    def __init__(self, dp, bundles):
        self.dp = dp
        self.dpid = dp.id
        self.in_sync = False  # holds exactly Border.flows(dpid), in `version`
        self.version = 0  # policy-table version (alternates on switches without bundles)
        self.bundles = bundles  # False once it refused one
        self.pending = "connected; reading its flows"  # why it is not in sync, None when it is
        self.failures = 0  # consecutive failed reconciliations
        self.audits = 0
        self.last_audit = None  # Unix time
        self.last_repair = None
        self.drift = False  # an audit found its flows changed behind the controller's back
        self.flow_count = None  # flows in the owned tables at the last reading
        self.audit_ms = None  # how long the last audit took: counts only, and with a full comparison
        self.full_audit_ms = None
        self.meter_rate = None  # audit meter rate set on the switch
        self.fragments = None  # its fragment handling once checked: "nx-match", or why not
        self.choice = None  # pipeline.Choice: its profile, once probed (smtp_border/pipeline.py)
        # With several controllers (etcd): "master" or "slave" once settled,
        # None while unknown (not yet claimed, or the lease was lost); the
        # master replica's name and the generation id sent with the role.
        self.role = None
        self.master = None
        self.generation = None
        # A slave's reading of the switch (it may read, not write): True when
        # it last found it holding exactly the policy in force as this replica
        # knows it; what differed otherwise, in `pending`.
        self.holds = False
        # Changes its master was to deliver since it last held the policy,
        # for the slave's next audit to read by their cookies; None: too many,
        # or unknown (it compares every flow).
        self.unseen = None
        self.wake = hub.Event()

    @property
    def tables(self):
        """The tables its profile owns: read, audited and reconciled."""
        return self.choice.profile.table_ids

    @property
    def enforces(self):
        """Holds the policy in force: written and confirmed by us, or, as a
        slave, read and found so (its master wrote it)."""
        return self.in_sync or (self.role == "slave" and self.holds)

    def unsynced(self, reason):
        self.in_sync = False
        self.pending = reason
        self.wake.set()


class SmtpPolicy(App):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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
        self._log_policy()
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
            " controller, through etcd) and result (enforced, pending, refused: invalid, conflicting or not saved; nothing"
            " changed).", ["source", "result"], registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.block_counters = BlockCounters()
        self.last_change = time.time()
        self.switches = {}  # dpid -> Switch, for the live connection of each dpid
        # Datapath -> when its hello arrived, to report install time from connect.
        self._hello_at = weakref.WeakKeyDictionary()
        self._n_tables = weakref.WeakKeyDictionary()  # Datapath -> n_tables of its features reply
        self._waiters = {}  # (Datapath, xid) -> _Waiter
        self._bundle_ids = itertools.count(1)
        self.bundles_wanted = os.environ.get(BUNDLES_ENV, "auto").lower() != "off"
        self.audit_seconds = float(os.environ.get(AUDIT_SECONDS_ENV) or AUDIT_SECONDS)
        # One change at a time, across all switches: changes never interleave,
        # and concurrent REST requests are applied one after the other.
        self.change_lock = hub.Semaphore(1)
        self._start_api = rest.register(self)
        tls.install()  # before Ryu starts its OpenFlow server (after every app is made)
        openflow.install_flow_stats_reader()  # flow-stats replies read as bytes (ryu_apps/wire.py)
        hub.spawn(self._expiry_loop)
        self.mastership = None
        if shared is not None:
            self.logger.info("smtp-border: API exceptions are shared in %s", shared.path)
            hub.spawn(self._watch_loop, shared)
            replica = os.environ.get(REPLICA_ENV) or f"{socket.gethostname()}:{os.getpid()}"
            self.mastership = Mastership(shared, replica)
            self.logger.info("smtp-border: replica %s; each switch's master is chosen in etcd", replica)
            hub.spawn(self._lease_loop)
            hub.spawn(self._masters_loop)

    def start(self):
        """Called by the framework once every app is made: serve the REST API too."""
        thread = super().start()
        self.threads.append(self._start_api())
        return thread

    @property
    def policy(self):
        return self.border.policy

    def _log_policy(self):
        p = self.policy
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
        self.logger.info(
            "smtp-border: policy %s: campus %s, smtp ports %s, %d gateway(s), %d exception(s) "
            "(%d from the API, %d expired); enforcing on %s",
            self.store.policy_file, ", ".join(map(str, p.campus)), list(p.smtp_ports), len(p.gateways),
            len(p.exceptions), len(self.store.api_exceptions), len(expired), where,
        )
        for e in expired:
            if e.lapsed:
                continue  # said by log_review
            self.logger.warning(
                "smtp-border: exception %s (%s) expired at %s and is not enforced",
                e.address, e.direction.value, e.expires.isoformat(),
            )
        self.log_quarantine(self.store.quarantined)
        self.log_review(p)

    def log_review(self, policy):
        """Log what of `policy` deserves the operator's eye; return it
        (grants for review, warnings), for the reload's answer."""
        review, warnings = policy.for_review(), policy.warnings()
        for warning in warnings:
            self.logger.warning("smtp-border: %s", warning)
        for e, why in review:
            self.logger.warning("smtp-border: Part 2 exception %s (%s) is for REVIEW: %s (granted \"until this"
                                " changes\"; contact %s)", e.id, e.address, why, e.contact or "none given")
        return review, warnings

    def log_quarantine(self, quarantined):
        for q in quarantined:
            self.logger.warning(
                "smtp-border: API exception %s (%s) is QUARANTINED, not enforced: %s;"
                " remove it with DELETE /smtp/v1/exceptions/%s, or change %s",
                q.id, q.address, q.reason, q.id, self.store.policy_file,
            )

    # -- changes ----------------------------------------------------------------

    def change(self, make, confirm=True, source="api"):
        """Apply one change: `make(border)` validates and saves it and returns
        an Outcome (or raises, and nothing changed); then every switch is
        brought to it. Returns (outcome, report) where report says which
        listed switches enforce it and which are pending. `confirm`: read
        the change on switches another controller masters (for an answer;
        not for a change that came from that controller). Timed, from the
        lock's wait to the answer, into smtp_border_change_seconds by
        `source` (api, replica) and result (enforced, pending, refused)."""
        started = time.monotonic()
        try:
            with self.change_lock:
                outcome = make(self.border)
                report = self.deliver(outcome, confirm)
        except Exception:
            self.change_seconds.labels(source, "refused").observe(time.monotonic() - started)
            raise
        self.change_seconds.labels(source, "pending" if report["pending"] else "enforced").observe(
            time.monotonic() - started)
        if not report["pending"]:
            self.last_change = time.time()
        return outcome, report

    def deliver(self, outcome, confirm=True):
        """Send each in-sync switch its diff, in parallel; wake the worker of
        any other (it reconciles against the new desired flows). Lock held."""
        threads, watched = {}, {}
        for dpid, switch in list(self.switches.items()):
            diff = outcome.diffs.get(dpid)
            if not self._writes(switch):
                if switch.role == "master":
                    # Our lease is late by our own clock: the change waits for the refresh.
                    switch.unsynced("lease refresh late: not writing until it is refreshed")
                if diff and switch.role == "slave":
                    # Its master replica delivers it (through etcd's watch).
                    # For an answer, confirm it by reading the switch, as a
                    # slave may, by the cookies of the flows concerned. A
                    # change that came from another controller is left to
                    # this switch's next audit, which reads those cookies
                    # only (switch.unseen): a dump of every flow on 50
                    # switches of 1,029 flows after each change, or polling
                    # them, took the fleet's change p50 from 22 to 364 ms,
                    # and to 81 ms at 100 switches (bench section 9).
                    switch.holds = False
                    if switch.unseen is not None:
                        switch.unseen.append(diff)
                        if sum(len(d) for d in switch.unseen) > MAX_UNSEEN:
                            switch.unseen = None  # the audit compares every flow
                    if confirm:
                        watched[dpid] = hub.spawn(self._seen_on_switch, switch, diff)
                continue
            if not switch.in_sync:
                switch.wake.set()
            elif diff:
                threads[dpid] = hub.spawn(self._push_diff, switch, diff, raise_error=True)
        crashed = {}
        for dpid, thread in threads.items():
            switch = self.switches.get(dpid)
            try:
                thread.wait()
            except SwitchFailed as err:
                self.counters[("push_failures", dpid)] += 1
                self.logger.error("smtp-border: switch %016x: change NOT applied, retrying: %s", dpid, err)
                if switch is not None:
                    switch.unsynced(f"change not confirmed: {err}; retrying")
            except Exception as err:  # our bug: say so, never report it as done
                self.logger.exception("smtp-border: switch %016x: delivering a change crashed", dpid)
                crashed[dpid] = f"{type(err).__name__}: {err}"
                if switch is not None:
                    switch.unsynced(f"delivery crashed ({type(err).__name__}); retrying")
        seen = {dpid for dpid, thread in watched.items() if thread.wait()}
        for dpid in seen:
            if dpid in self.switches and not self.switches[dpid].unseen:
                self.switches[dpid].holds = True  # (earlier changes unseen: its audit reads them)
        return self.enforcement(crashed, seen)

    def enforcement(self, crashed=None, seen=()):
        """Which switches enforce the policy in force and which are pending.
        `seen`: switches of another master found holding the change."""
        listed = self.border.listed()
        dpids = sorted(self.switches) if listed is None else listed
        enforced, pending = [], []
        for dpid in dpids:
            switch = self.switches.get(dpid)
            spec = self.policy.switch_spec(dpid)
            name = spec.name if spec else None
            if switch is None:
                pending.append({"dpid": f"{dpid:016x}", "name": name, "reason": "not connected", "connected": False})
            elif switch.enforces or dpid in seen:
                enforced.append(f"{dpid:016x}")
            elif switch.role == "slave":
                pending.append({"dpid": f"{dpid:016x}", "name": name, "connected": True,
                                "reason": f"delivered by its master, controller {switch.master}"})
            else:
                pending.append({"dpid": f"{dpid:016x}", "name": name, "connected": True,
                                "reason": switch.pending or "not yet confirmed"})
        return {"enforced": enforced, "pending": pending, "crashed": crashed or {}}

    def _push_diff(self, switch, diff):
        """Send an in-sync switch the diff of one change."""
        dp = switch.dp
        started = time.monotonic()
        with contextlib.nullcontext() if len(diff) < 1000 else gc_paused():
            self._read_counters_before(switch, diff)
            self._ensure_fragments(switch)
            self._ensure_meter(switch)
            if switch.bundles:
                try:
                    self._exchange(dp, openflow.bundle(dp, next(self._bundle_ids), openflow.apply_diff(diff)),
                                   [self._barrier(dp)])
                    how = "in one bundle"
                except SwitchFailed as err:
                    if not _refuses_bundles(dp.ofproto, err.codes):
                        raise
                    self._no_bundles(switch)
                    return self._reconcile(switch)
            elif switch.choice.profile.name != MULTI:
                for phase in ordering.one_table_phases(diff.add, diff.delete):
                    self._exchange(dp, [openflow.flow_mod(dp, op, r) for op, r in phase], [self._barrier(dp)])
                how = "with ordered flow mods"
            elif ordering.is_allow_only(diff):
                version = switch.version
                adds = [wire.add_flow(with_version(r, version)) for r in diff.add]
                deletes = [wire.delete_flow(with_version(r, version)) for r in diff.delete]
                for phase in (adds, deletes):
                    if phase:
                        self._exchange(dp, phase, [self._barrier(dp)])
                how = "with ordered flow mods"
            else:
                # Not just allows: the classification changes. Read the switch
                # and take it there in the two-phase order.
                return self._reconcile(switch)
        self.logger.info(
            "smtp-border: switch %016x %s: %d flows added or changed, %d removed %s, confirmed by barrier (%.1f ms)",
            switch.dpid, self._role(switch.dpid), len(diff.add), len(diff.delete), how,
            (time.monotonic() - started) * 1000,
        )

    def _no_bundles(self, switch):
        self.logger.warning("smtp-border: switch %016x refuses bundles; using ordered flow mods", switch.dpid)
        switch.bundles = False

    # -- each switch's worker ---------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPHello, HANDSHAKE_DISPATCHER)
    def _hello(self, ev):
        self._hello_at[ev.msg.datapath] = time.monotonic()

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        self._n_tables[ev.msg.datapath] = ev.msg.n_tables

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            if not self._certificate_fits(dp):
                return
            current = self.switches.get(dp.id)
            if current is not None and current.dp is not dp:
                # Contested in its own thread: the echo's reply arrives on this one.
                hub.spawn(self._contest, current, dp)
            else:
                self._manage(dp)
        elif dp.id is not None and dp.id in self.switches and self.switches[dp.id].dp is dp:
            switch = self.switches.pop(dp.id)
            self.border.disconnected(dp.id)
            if self.mastership is not None and switch.role == "master":
                hub.spawn(self.mastership.release, dp.id, switch.generation)
            for waiter in self._waiters_for(dp):
                waiter.fail("switch disconnected before answering")
            self.logger.info("smtp-border: switch %016x disconnected; its flows stay in force", dp.id)

    def _certificate_fits(self, dp):
        """A switch whose dpid the policy pins to a certificate must have
        presented that one (TLS): a device with another campus certificate
        cannot claim its dpid. The connection is closed otherwise."""
        spec = self.policy.switch_spec(dp.id)
        pin = spec.certificate_sha256 if spec else None
        if pin is None:
            return True
        getpeercert = getattr(getattr(dp, "socket", None), "getpeercert", None)
        certificate = getpeercert(binary_form=True) if getpeercert else None
        presented = hashlib.sha256(certificate).hexdigest() if certificate else None
        if presented == pin:
            return True
        self.counters[("certificate_refused", dp.id)] += 1
        self.logger.warning(
            "smtp-border: connection from %s claims dpid %016x, pinned to certificate %s..., but presented %s:"
            " closed", _peer(dp), dp.id, pin[:16], f"{presented[:16]}..." if presented else "no certificate",
        )
        dp.close()
        return False

    def _manage(self, dp):
        spec = self.policy.switch_spec(dp.id)
        switch = Switch(dp, self.bundles_wanted and getattr(spec, "bundles", None) is not False)
        self.switches[dp.id] = switch
        hub.spawn(self._worker, switch)

    def _contest(self, current, newcomer):
        """A second connection claims a dpid that is connected. Any TCP peer
        can claim any dpid, so the one already connected keeps it if it is
        alive (answers an echo within ECHO_TIMEOUT): the newcomer is closed,
        logged and counted. If it does not answer, it was a dead connection
        (a switch that reconnected before its old TCP connection timed out):
        the newcomer takes over and the old one is closed."""
        try:
            request = current.dp.ofproto_parser.OFPEchoRequest(current.dp, data=b"smtp-border")
            self._exchange(current.dp, [], [request], timeout=ECHO_TIMEOUT)
            alive = True
        except SwitchFailed:
            alive = False
        if alive and self._current(current):
            self.counters[("duplicate_dpid_refused", newcomer.id)] += 1
            self.logger.warning(
                "smtp-border: a second connection from %s claims dpid %016x, which is connected from %s and"
                " answers: the new connection is closed", _peer(newcomer), newcomer.id, _peer(current.dp),
            )
            newcomer.close()
            return
        self.logger.warning(
            "smtp-border: switch %016x connected again from %s; the old connection from %s does not answer and"
            " is closed", newcomer.id, _peer(newcomer), _peer(current.dp),
        )
        self._manage(newcomer)
        current.dp.close()

    def _current(self, switch):
        return self.switches.get(switch.dpid) is switch

    def _worker(self, switch):
        """Keep one connection's switch at its desired flows until it goes.
        Nothing ends this loop but the switch leaving: every failure, ours
        included, is logged and retried."""
        delay = 0.0
        while self._current(switch):
            if switch.in_sync:
                switch.wake.wait(timeout=self.audit_seconds)
            elif delay:
                switch.wake.wait(timeout=delay)
            switch.wake.clear()
            try:
                if self.mastership is not None and not self._writes(switch):
                    if switch.role == "master" and self.mastership.holds_lease:
                        # Late by our clock, not lost: write again once the lease is refreshed.
                        delay = RETRY_MIN
                        continue
                    self._settle_role(switch)
                    if switch.role != "master":
                        # A slave: woken when its master goes or a change
                        # comes; else it claims again after an audit interval.
                        # Meanwhile it reads the switch (audit and metrics on
                        # every replica), a second after a difference.
                        if switch.role == "slave":
                            self._observe(switch)
                        switch.failures = 0
                        delay = self.audit_seconds if switch.holds else min(1.0, self.audit_seconds)
                        continue
                with self.change_lock:
                    if not self._current(switch):
                        return
                    held = self._audit(switch) if switch.in_sync else None
                    if not switch.in_sync:
                        self._reconcile(switch, held)
                switch.failures, delay = 0, 0.0
            except Exception as err:
                switch.failures += 1
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** (switch.failures - 1))
                if self.mastership is not None and _refused_as_slave(switch.dp.ofproto, getattr(err, "codes", ())):
                    # Another replica is master now (we were fenced), or our
                    # generation id is stale: settle again, at once the first
                    # time, then backing off (a key that stays stale must not
                    # make a busy loop).
                    self.logger.warning("smtp-border: switch %016x refuses our writes or role: another controller is"
                                        " master now; stepping down", switch.dpid)
                    switch.role = None
                    delay = 0.0 if switch.failures == 1 else delay
                if isinstance(err, SwitchFailed):
                    self.logger.error("smtp-border: switch %016x: policy NOT applied (attempt %d, retrying in %.1f s): %s",
                                      switch.dpid, switch.failures, delay, err)
                else:
                    self.logger.exception("smtp-border: switch %016x: reconciling crashed (attempt %d, retrying in %.1f s)",
                                          switch.dpid, switch.failures, delay)
                switch.in_sync = False
                switch.pending = f"{err} (attempt {switch.failures}, next in {delay:.1f} s)"

    def _reconcile(self, switch, held=None):
        """Make the switch hold exactly its desired flows, from whatever it
        holds now: read it (unless `held`, what an audit just read under the
        same lock), send the difference, confirm. Lock held."""
        dp = switch.dp
        started = time.monotonic()
        with gc_paused():
            if switch.choice is None:
                self._probe(switch)
            over = self.border.over_budget(switch.dpid)
            if over is not None:
                raise SwitchFailed(f"{over}: nothing sent (raise switches[].table_size if the switch has more,"
                                   " or grant fewer exceptions)")
            desired = self.border.flows(switch.dpid)
            self._ensure_fragments(switch)
            self._ensure_meter(switch)
            rules, foreign = held or self._read_flows(switch)
            if switch.bundles:
                diff = diff_rules(rules, desired)
                # A foreign flow in a desired flow's place is replaced by its add, not deleted after it.
                keys = {r.key for r in desired} if foreign else ()
                messages = openflow.apply_diff(diff) + [openflow.delete_foreign(dp, f) for f in foreign if f.key not in keys]
                sent = len(messages)
                if sent:
                    try:
                        self._exchange(dp, openflow.bundle(dp, next(self._bundle_ids), messages), [self._barrier(dp)])
                    except SwitchFailed as err:
                        if not _refuses_bundles(dp.ofproto, err.codes):
                            raise
                        self._no_bundles(switch)
                        return self._reconcile(switch)
                how, version = "in one bundle", 0
                counts = (len(diff.add), len(diff.delete) + len(foreign))
            else:
                if switch.choice.profile.name == MULTI:
                    version, phases = ordering.plan(list(rules) + foreign, desired)
                else:
                    version, phases = 0, ordering.plan_one_table(list(rules) + foreign, desired)
                for phase in phases:
                    self._exchange(dp, [openflow.flow_mod(dp, op, item) for op, item in phase], [self._barrier(dp)])
                how = f"with ordered flow mods ({len(phases)} phases)"
                sent = sum(len(p) for p in phases)
                counts = (sum(op == ordering.ADD for p in phases for op, _ in p),
                          sum(op == ordering.DELETE for p in phases for op, _ in p))
        switch.version, switch.in_sync, switch.pending = version, True, None
        switch.flow_count = len(desired)
        if sent:
            switch.last_repair = time.time()
        elapsed = (time.monotonic() - started) * 1000
        hello_at = self._hello_at.pop(dp, None)
        since_hello = "" if hello_at is None else f", {(time.monotonic() - hello_at) * 1000:.1f} ms after its hello"
        if sent:
            self.logger.info(
                "smtp-border: switch %016x %s: %d flows installed %s, confirmed by barrier (%.1f ms%s);"
                " %d added or changed, %d removed, %d already in place",
                switch.dpid, self._role(switch.dpid), len(desired), how, elapsed, since_hello,
                counts[0], counts[1], len(desired) - counts[0],
            )
        else:
            self.logger.info(
                "smtp-border: switch %016x %s: %d flows installed already, nothing sent (%.1f ms%s)",
                switch.dpid, self._role(switch.dpid), len(desired), elapsed, since_hello,
            )
        if switch.drift:
            switch.drift = False
            self.counters[("repairs", switch.dpid)] += 1

    def _audit(self, switch):
        """Check an in-sync switch for drift; mark it unsynced if found, and
        return what was read of it (rules, foreign flows) for the repair. Lock held."""
        dp = switch.dp
        started = time.monotonic()
        desired = self.border.flows(switch.dpid)
        config = dp.ofproto_parser.OFPGetConfigRequest(dp)
        counted, replies = self._count(switch, desired, [config])
        full = switch.audits % FULL_AUDIT_EVERY == 0
        if switch.fragments == "nx-match" and replies[config.xid][0].flags & dp.ofproto.OFPC_FRAG_MASK != FRAG_NX_MATCH:
            self.counters[("drift", "config")] += 1
            self.logger.warning("smtp-border: switch %016x DRIFT found by audit: fragment handling changed to %d; "
                                "repairing", switch.dpid, replies[config.xid][0].flags & dp.ofproto.OFPC_FRAG_MASK)
            switch.fragments = None
            switch.in_sync, switch.drift = False, True
            switch.pending = "drift: fragment handling changed; repairing"
            return None
        if not full and counted:
            switch.audit_ms = (time.monotonic() - started) * 1000
            return
        rules, foreign = self._read_flows(switch, dump=True)
        target = desired if switch.version == 0 else {with_version(r, switch.version) for r in desired}
        missing = len({r.key for r in target} - {r.key for r in rules})
        diff = diff_rules(rules, target)
        extra = len(diff.delete) + len(foreign)
        changed = len(diff.add) - missing
        switch.full_audit_ms = (time.monotonic() - started) * 1000
        if not (missing or extra or changed):
            return
        for kind, n in (("missing", missing), ("extra", extra), ("changed", changed)):
            self.counters[("drift", kind)] += n
        self.logger.warning(
            "smtp-border: switch %016x DRIFT found by audit: %d flows missing, %d extra, %d changed; repairing",
            switch.dpid, missing, extra, changed,
        )
        switch.in_sync, switch.drift = False, True
        switch.pending = f"drift: {missing} missing, {extra} extra, {changed} changed; repairing"
        return rules, foreign

    def _count(self, switch, desired, extra=()):
        """An audit's first reading: the flows in each owned table (one
        aggregate request each, with `extra` requests in the same write),
        noted on the switch. (Whether every table holds as many flows as
        `desired` puts there, {xid: replies}.)"""
        dp = switch.dp
        requests = [self._aggregate(dp, table) for table in switch.tables]
        replies = self._exchange(dp, [], requests + list(extra))
        counts = {table: replies[r.xid][0].flow_count for table, r in zip(switch.tables, requests)}
        switch.audits += 1
        switch.last_audit, switch.flow_count = time.time(), sum(counts.values())
        expected = collections.Counter(r.table for r in desired)
        return all(counts[t] == expected.get(t, 0) for t in switch.tables), replies

    def _observe(self, switch):
        """A slave's audit: read the switch (a slave's right) and note whether
        it holds the policy in force as this replica knows it. Repairs are
        its master's: this only reports (`holds`, `pending`, the flow count,
        the block counters for /metrics). Counts each time; when they match
        after a difference, the flows of the changes since it last held the
        policy (by their cookies), or every flow. The periodic full
        comparison is the master's alone (it repairs what it finds); the
        slaves' would double the dumps every switch answers."""
        with self.change_lock:
            desired = self.border.flows(switch.dpid)
        counted, _ = self._count(switch, desired)
        master = f"slave: controller {switch.master} is master"
        if not counted:
            switch.holds = False
            switch.pending = (f"{master}; the switch holds {switch.flow_count} flows where the policy in force has"
                              f" {len(desired)} (a change on its way, or drift its master repairs)")
            return
        if switch.holds:
            return  # (a full comparison is its master's audit's: that one repairs)
        if switch.unseen:
            # Held the policy before these changes: read what they touch.
            cookies = {r.cookie for d in switch.unseen for r in d.add + d.delete}
            held = self._held_by_cookies(switch, cookies)
            want = {r for r in desired if r.cookie in cookies}
            if held == want:
                switch.holds, switch.unseen, switch.pending = True, [], None
            else:
                switch.pending = (f"{master}; {len(want - held)} flows of the latest changes not yet on the switch,"
                                  f" {len(held - want)} to go (a change on its way, or drift its master repairs)")
            return
        rules, foreign = self._read_flows(switch, dump=True)
        diff = diff_rules({with_version(r, 0) for r in rules}, desired)
        switch.holds = not (diff.add or diff.delete or foreign)
        switch.unseen = [] if switch.holds else None
        switch.pending = None if switch.holds else (
            f"{master}; the switch differs from the policy in force: {len(diff.add)} flows to add,"
            f" {len(diff.delete) + len(foreign)} to remove (a change on its way, or drift its master repairs)")

    def _read_flows(self, switch, dump=False):
        """The switch's flows in the owned tables: (FlowRules, foreign flows).
        Flows with our cookie in other tables (left by another profile) are
        foreign too. Empty tables (a fresh switch) are told by their counts,
        without a dump."""
        dp = switch.dp
        tables = switch.tables
        if not dump:
            requests = [self._aggregate(dp, table) for table in tables]
            replies = self._exchange(dp, [], requests)
            if not any(replies[r.xid][0].flow_count for r in requests):
                return set(), []
        rules, foreign = set(), []
        entries = self.switch_flows(dp)
        for entry in entries:
            if entry.table_id not in tables:
                if cookie_clause(entry.cookie) is not None:
                    foreign.append(openflow.Foreign(entry))
                continue
            (foreign.append(openflow.Foreign(entry)) if entry.rule is None else rules.add(entry.rule))
        self._observe_blocks(switch.dpid, entries)
        return rules, foreign

    def _read_counters_before(self, switch, diff):
        """Before a change replaces or removes block flows, read their counters."""
        if any(cookie_clause(r.cookie) in DIRECTIONS for r in diff.delete + diff.add):
            self.read_block_counters(switch)

    def read_block_counters(self, switch):
        dp = switch.dp
        request = openflow.flow_stats_request(dp, BLOCK_COOKIE, BLOCK_COOKIE_MASK)
        replies = self._exchange(dp, [], [request])
        self._observe_blocks(switch.dpid, [e for body in replies[request.xid] for e in body.entries()])

    def _observe_blocks(self, dpid, entries):
        switch = self.switches.get(dpid)
        tables = switch.tables if switch is not None and switch.choice is not None else ()
        readings = []
        for entry in entries:
            clause = cookie_clause(entry.cookie)
            if clause in DIRECTIONS and entry.table_id in tables:
                key = (entry.table_id, entry.priority, entry.match)
                readings.append((key, DIRECTIONS[clause][0], entry.packet_count, entry.byte_count))
        self.block_counters.observe(dpid, readings)

    def _role(self, dpid):
        return "enforcing" if self.policy.switch_spec(dpid) else "inside (forwarding only)"

    # -- several controllers: roles ----------------------------------------------

    def _writes(self, switch):
        """May this controller write to the switch? Always alone; with
        several, only as its master while the etcd lease holds."""
        return self.mastership is None or (switch.role == "master" and self.mastership.lease_ok)

    def _settle_role(self, switch):
        """Claim the switch's master key in etcd and tell the switch our role
        with the key's generation id. A switch that calls the id stale has
        seen a newer master: read the key again and settle as it says."""
        dp = switch.dp
        try:
            master, generation = self.mastership.claim(switch.dpid)
        except StateUnavailable as err:
            switch.role, switch.in_sync = None, False
            switch.pending = f"mastership unknown, not writing: {err}"
            raise SwitchFailed(switch.pending) from None
        mine = master == self.mastership.replica
        if not mine and switch.role == "slave" and (switch.master, switch.generation) == (master, generation):
            return  # nothing changed since the last look: the switch knows our role
        ofp, parser = dp.ofproto, dp.ofproto_parser
        request = parser.OFPRoleRequest(dp, ofp.OFPCR_ROLE_MASTER if mine else ofp.OFPCR_ROLE_SLAVE, generation)
        # The first role on this connection goes with its asynchronous configuration.
        self._exchange(dp, [] if switch.generation is not None else [self._async_config(dp)], [request])
        was = switch.role
        switch.holds = switch.holds and was == "slave"
        switch.unseen = switch.unseen if was == "slave" else None
        switch.role, switch.master, switch.generation = ("master" if mine else "slave"), master, generation
        if mine:
            switch.in_sync = False
            switch.pending = "master now; reconciling"
        else:
            switch.in_sync = False
            switch.pending = f"slave: controller {master} is master"
            # Know its profile and flows as the master does (reads are a
            # slave's right): to confirm changes on it, and to take over.
            with self.change_lock:
                if switch.choice is None:
                    self._probe(switch)
                self.border.flows(switch.dpid)
        if was != switch.role:
            self.logger.info("smtp-border: switch %016x: %s (master %s, generation %d)", switch.dpid, switch.role,
                             master, generation)

    @staticmethod
    def _async_config(dp):
        """What this connection is sent in either role (OFPT_SET_ASYNC,
        OpenFlow 1.3 section 6.1.1): the defaults, except that a slave gets
        the blocked-attempt samples too. The block flows send them to
        "the controller", which Open vSwitch reads as every connection
        whose configuration asks; by default only the master's does, and
        each replica's GET /blocked would hold only its own switches'
        attempts. Masks: [master or equal, slave]."""
        ofp = dp.ofproto
        packet_in = 1 << ofp.OFPR_NO_MATCH | 1 << ofp.OFPR_ACTION
        port_status = 1 << ofp.OFPPR_ADD | 1 << ofp.OFPPR_DELETE | 1 << ofp.OFPPR_MODIFY
        flow_removed = (1 << ofp.OFPRR_IDLE_TIMEOUT | 1 << ofp.OFPRR_HARD_TIMEOUT | 1 << ofp.OFPRR_DELETE
                        | 1 << ofp.OFPRR_GROUP_DELETE)
        return dp.ofproto_parser.OFPSetAsync(dp, [packet_in, 1 << ofp.OFPR_ACTION], [port_status, port_status],
                                             [flow_removed, 0])

    def _seen_on_switch(self, switch, diff, timeout=None):
        """True once the switch holds the diff (its adds, none of its deletes),
        read by the cookies of the flows concerned; False after `timeout`."""
        deadline = time.monotonic() + (CONFIRM_SECONDS if timeout is None else timeout)
        cookies = {r.cookie for r in diff.add + diff.delete}
        while time.monotonic() < deadline:
            try:
                held = self._held_by_cookies(switch, cookies)
            except SwitchFailed:
                return False
            keys = {r.key for r in held}
            if all(r in held for r in diff.add) and not any(r.key in keys for r in diff.delete):
                return True
            hub.sleep(0.05)
        return False

    def _held_by_cookies(self, switch, cookies):
        """The switch's rules that carry these cookies, read as version 0 (a
        switch without bundles holds its policy table in either version:
        ordering.py). One flow-stats request a cookie, up to MAX_UNSEEN."""
        dp = switch.dp
        if len(cookies) <= MAX_UNSEEN:
            requests = [openflow.flow_stats_request(dp, cookie, 0xFFFFFFFFFFFFFFFF) for cookie in cookies]
            replies = self._exchange(dp, [], requests)
            entries = [e for r in requests for body in replies[r.xid] for e in body.entries()]
        else:
            entries = self.switch_flows(dp)
        return {with_version(e.rule, 0) for e in entries if e.rule is not None and e.cookie in cookies}

    def _lease_loop(self):
        """Refresh the lease every third of its life. Lost: stop writing at
        once to every switch we were master of, and settle each again."""
        while True:
            hub.sleep(self.mastership.ttl / 3)
            asked = time.monotonic()
            refreshed = self.mastership.refresh()
            took = time.monotonic() - asked
            if took > self.mastership.ttl / 3:
                self.logger.warning("smtp-border: refreshing the etcd lease took %.1f s", took)
            if refreshed or not any(s.role == "master" for s in self.switches.values()):
                continue
            # (Writes stopped already: _writes() asks lease_ok, which lapses by our own clock.)
            self.logger.error("smtp-border: lost the etcd lease: no longer master of any switch; not writing until"
                              " mastership is settled again")
            for switch in list(self.switches.values()):
                if switch.role == "master":
                    switch.role, switch.in_sync = None, False
                    switch.pending = "lost the etcd lease; settling mastership again"
                    switch.wake.set()

    def _masters_loop(self):
        """Master keys as they change: a switch whose master went (its key
        deleted: lease lapsed, or released) is claimed again by every replica
        it is connected to; one whose key another replica took is ours no more."""
        while True:
            try:
                events, cancel = self.mastership.watch()
            except Exception as err:
                self.logger.error("smtp-border: cannot watch mastership in etcd (retrying): %s", err)
                hub.sleep(RETRY_MIN * 4)
                continue
            guard = hub.spawn(self._watch_guard, self.mastership, cancel)
            try:
                for dpid, master in events:
                    switch = self.switches.get(dpid)
                    if switch is None:
                        continue
                    if master is None:
                        self.logger.info("smtp-border: switch %016x: its master key is gone (lease lapsed or"
                                         " released)", dpid)
                    if master is None or (switch.role == "master" and master != self.mastership.replica):
                        switch.role, switch.in_sync = None, False
                        switch.pending = "master went; settling mastership again"
                        switch.wake.set()
            except Exception:
                self.logger.exception("smtp-border: mastership watch failed; watching again")
            finally:
                cancel()
                guard.kill()
            hub.sleep(RETRY_MIN)

    def _probe(self, switch):
        """Ask a switch that just connected what it can do (table features,
        meter features; its table count came with its features reply), and
        give it its profile (smtp_border/pipeline.py). A switch that refuses
        a request simply does not have that to offer; one that does not
        answer fails the attempt, which is retried."""
        dp = switch.dp
        started = time.monotonic()
        tables = max_meters = None
        features, meters = openflow.table_features_request(dp), openflow.meter_features_request(dp)
        try:  # both at once: one round trip for a switch that answers both, as most do
            replies = self._exchange(dp, [], [features, meters])
            tables = openflow.table_features(replies[features.xid])
            max_meters = replies[meters.xid][0].max_meter if replies[meters.xid] else 0
        except SwitchFailed as err:
            if not err.codes:
                raise
            for request in (openflow.table_features_request(dp), openflow.meter_features_request(dp)):
                try:
                    reply = self._exchange(dp, [], [request])[request.xid]
                except SwitchFailed as err:
                    if not err.codes:
                        raise
                    reply = None  # refused: the switch does not have it to offer
                if isinstance(request, dp.ofproto_parser.OFPTableFeaturesStatsRequest):
                    tables = None if reply is None else openflow.table_features(reply)
                else:
                    max_meters = reply[0].max_meter if reply else 0
        capabilities = Capabilities(self._n_tables.get(dp), tables or None, max_meters)
        switch.choice = self.border.probed(dp.id, capabilities)
        self.logger.info("smtp-border: switch %016x: pipeline %s, %s; budget %s (%.1f ms to probe)",
                         switch.dpid, switch.choice.profile.describe(), "; ".join(switch.choice.reasons),
                         "none known" if switch.choice.budget is None
                         else f"{switch.choice.budget} entries ({switch.choice.budget_source})",
                         (time.monotonic() - started) * 1000)

    def _ensure_fragments(self, switch):
        """An enforcing switch must read the ports of first fragments
        (FRAG_NX_MATCH) before its flows are trusted to judge them."""
        dp = switch.dp
        if switch.fragments is not None or not self.policy.switch_spec(dp.id):
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        request = parser.OFPGetConfigRequest(dp)
        config = self._exchange(dp, [], [request])[request.xid][0]
        if config.flags & ofp.OFPC_FRAG_MASK != FRAG_NX_MATCH:
            flags = (config.flags & ~ofp.OFPC_FRAG_MASK) | FRAG_NX_MATCH
            check = parser.OFPGetConfigRequest(dp)
            try:
                replies = self._exchange(dp, [parser.OFPSetConfig(dp, flags, config.miss_send_len)], [check])
                config = replies[check.xid][0]
            except SwitchFailed as err:
                self.logger.error("smtp-border: switch %016x refuses Nicira fragment handling: %s", switch.dpid, err)
        if config.flags & ofp.OFPC_FRAG_MASK == FRAG_NX_MATCH:
            switch.fragments = "nx-match"
            return
        switch.fragments = (f"mode {config.flags & ofp.OFPC_FRAG_MASK}: first TCP fragments are dropped, "
                            "fragmented SMTP or not")
        self.logger.warning("smtp-border: switch %016x keeps fragment handling %s", switch.dpid, switch.fragments)

    def _ensure_meter(self, switch):
        """The audit meters (inbound, outbound) must exist, at the policy's
        rate, before any flow uses them."""
        dp = switch.dp
        rate = self.policy.audit.sample_rate
        if (not rate or not self.policy.switch_spec(dp.id) or switch.meter_rate == rate
                or not switch.choice.profile.meters):
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        # Ask first rather than try and fail: an error here would read like a
        # fault. (Asking for one unknown meter is an error too, so ask for all.)
        request = parser.OFPMeterConfigStatsRequest(dp, 0, ofp.OFPM_ALL)
        existing = {m.meter_id for m in self._exchange(dp, [], [request])[request.xid]}
        mods = [openflow.set_meter(dp, meter, rate, ofp.OFPMC_MODIFY if meter in existing else ofp.OFPMC_ADD)
                for meter in AUDIT_METERS]
        self._exchange(dp, mods, [self._barrier(dp)])
        switch.meter_rate = rate

    def _watch_loop(self, shared):
        """Changes other controllers saved in etcd, applied here as they come
        (Border.sync) and delivered to this controller's switches. A watch
        whose member stops answering is made again on another, from the
        revision last applied: nothing is missed."""
        delay = RETRY_MIN
        while True:
            try:
                events, cancel = shared.watch()
            except Exception as err:  # StateUnavailable, or anything else: never stop watching
                self.logger.error("smtp-border: cannot watch etcd for other controllers' changes (retrying in %.1f s):"
                                  " %s", delay, err)
                hub.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay = RETRY_MIN
            guard = hub.spawn(self._watch_guard, shared, cancel)
            try:
                for event in events:
                    self._remote([event])
            except Exception:  # one bad event must not end the watch for good
                self.logger.exception("smtp-border: applying a change from etcd failed; watching again")
            finally:
                cancel()
                guard.kill()
            hub.sleep(RETRY_MIN)

    def _watch_guard(self, shared, cancel):
        while shared.watch_alive():
            hub.sleep(WATCH_CHECK_SECONDS)
        self.logger.warning("smtp-border: the etcd member the watch streams from stopped answering (or the watch"
                            " ended); watching again")
        cancel()

    def _remote(self, events):
        # Not confirmed on the switches the other controller masters: that
        # one answers for them, and a later change of its own (already on
        # its switches) would make this wait in vain, holding the lock that
        # the next change from etcd needs. (The fleet benchmark found it.)
        outcome, report = self.change(lambda border: border.sync(events), confirm=False, source="replica")
        change = outcome.change
        if change.added or change.removed:
            self.logger.info(
                "smtp-border: change from another controller: +%d -%d exception(s); enforced on %s; pending on %s",
                len(change.added), len(change.removed), report["enforced"] or "none",
                [f"{p['dpid']} ({p['reason']})" for p in report["pending"]] or "none")

    def _expiry_loop(self):
        while True:
            hub.sleep(EXPIRY_CHECK_SECONDS)
            try:
                self.expire(utc_now())
            except Exception:  # one bad tick must not end expiry for good
                self.logger.exception("smtp-border: expiry check failed; trying again in %.0f s", EXPIRY_CHECK_SECONDS)

    def expire(self, now):
        """Withdraw the exceptions whose time has come, as one incremental change."""
        with self.change_lock:
            outcome = self.border.expire(now)
            if outcome is None:
                return None
            for e in outcome.change.removed:
                self.logger.warning(
                    "smtp-border: exception %s %s (%s, %s) expired at %s; no longer enforced",
                    e.id, e.address, e.direction.value, e.reason, e.expires.isoformat(),
                )
            self.counters["expired"] += len(outcome.change.removed)
            return self.deliver(outcome, confirm=False)

    # -- talking to switches --------------------------------------------------

    def _barrier(self, dp):
        return dp.ofproto_parser.OFPBarrierRequest(dp)

    def _aggregate(self, dp, table):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        return parser.OFPAggregateStatsRequest(dp, 0, table, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0, parser.OFPMatch())

    def _exchange(self, dp, messages, requests, timeout=None):
        """Send `messages` then `requests` in one write, and wait for every
        request's reply (REPLY_TIMEOUT by default). Returns {request xid: reply bodies}.

        Raises SwitchFailed if the switch reports an error for any of them or
        does not answer in time."""
        everything = list(messages) + list(requests)
        for msg in everything:
            dp.set_xid(msg)
            msg.serialize()
        waiter = _Waiter(dp, requests, (m.xid for m in everything))
        for request in requests:
            self._waiters[dp, request.xid] = waiter
        try:
            # One write for the lot: a full install is 20,000 messages, and
            # one send-queue entry each would cost more than encoding them.
            if not dp.send(b"".join(msg.buf for msg in everything)):
                raise SwitchFailed("connection to the switch closed while sending")
            timeout = REPLY_TIMEOUT if timeout is None else timeout
            if not waiter.done.wait(timeout=timeout):
                raise SwitchFailed(f"no reply within {timeout:g} s")
        finally:
            for request in requests:
                self._waiters.pop((dp, request.xid), None)
        if waiter.errors:
            raise SwitchFailed(
                f"switch reported {len(waiter.errors)} error(s), first: {waiter.errors[0]}", tuple(waiter.codes)
            )
        return waiter.replies

    def switch_flows(self, dp):
        """Every flow on the switch, as ryu_apps.wire.FlowEntry."""
        request = openflow.flow_stats_request(dp)
        return [entry for body in self._exchange(dp, [], [request])[request.xid] for entry in body.entries()]

    def meter_stats(self, dp):
        """OFPMeterStats of the audit meters (empty without them)."""
        request = dp.ofproto_parser.OFPMeterStatsRequest(dp, 0, dp.ofproto.OFPM_ALL)
        return self._exchange(dp, [], [request])[request.xid]

    def switch_status(self, dpid):
        """What GET /smtp/v1/switches reports for one switch: what the
        controller knows, without asking the switch or compiling anything."""
        spec = self.policy.switch_spec(dpid)
        switch = self.switches.get(dpid)
        status = {
            "dpid": f"{dpid:016x}",
            "name": spec.name if spec else None,
            "role": "enforcing" if spec else "inside",
            "uplinks": list(spec.uplinks) if spec else [],
            "connected": switch is not None,
            "in_sync": None,
            "pending": "not connected",
            "flow_count": None,
            "bundles": None,
            "fragments": None,
            "last_audit": None,
            "last_repair": None,
            "repairs": self.counters[("repairs", dpid)],
        }
        if switch is None:
            return status
        status.update(
            in_sync=switch.enforces, pending=switch.pending, flow_count=switch.flow_count, bundles=switch.bundles,
            fragments=switch.fragments,
            last_audit=_iso(switch.last_audit), last_repair=_iso(switch.last_repair),
            audit_ms=_rounded(switch.audit_ms), full_audit_ms=_rounded(switch.full_audit_ms),
        )
        if not switch.bundles:
            status["version"] = switch.version
        if self.mastership is not None:
            status.update(openflow_role=switch.role, master=switch.master, generation=switch.generation,
                          replica=self.mastership.replica)
        if switch.choice is not None:
            needed, available, _ = self.border.budget(dpid)
            status["pipeline"] = switch.choice.to_dict()
            status["entries"] = {"table": switch.choice.profile.exception_table, "needed": needed,
                                 "available": available,
                                 "headroom": None if available is None else available - needed}
        return status

    def verify(self, dpid):
        """Audit one switch now, with a full comparison (GET /switches?verify=1)."""
        switch = self.switches.get(dpid)
        if switch is None or not switch.in_sync:
            return
        switch.audits = FULL_AUDIT_EVERY - 1  # the next audit is a full one
        try:
            self._audit(switch)
        except SwitchFailed as err:
            switch.unsynced(f"audit failed: {err}")
        if not switch.in_sync:
            switch.wake.set()

    def known_dpids(self):
        listed = {s.dpid for s in self.policy.switches or ()}
        return sorted(listed | set(self.switches))

    # -- replies --------------------------------------------------------------

    @set_ev_cls([ofp_event.EventOFPBarrierReply, ofp_event.EventOFPEchoReply, ofp_event.EventOFPRoleReply],
                MAIN_DISPATCHER)
    def _barrier_reply(self, ev):
        waiter = self._waiters.get((ev.msg.datapath, ev.msg.xid))
        if waiter is not None:
            waiter.answered(ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPGetConfigReply, MAIN_DISPATCHER)
    def _config_reply(self, ev):
        waiter = self._waiters.get((ev.msg.datapath, ev.msg.xid))
        if waiter is not None:
            waiter.replies[ev.msg.xid].append(ev.msg)
            waiter.answered(ev.msg.xid)

    @set_ev_cls(
        [ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPMeterConfigStatsReply, ofp_event.EventOFPMeterStatsReply,
         ofp_event.EventOFPAggregateStatsReply, ofp_event.EventOFPTableFeaturesStatsReply,
         ofp_event.EventOFPMeterFeaturesStatsReply],
        MAIN_DISPATCHER,
    )
    def _multipart_reply(self, ev):
        msg = ev.msg
        waiter = self._waiters.get((msg.datapath, msg.xid))
        if waiter is not None:
            body = waiter.replies[msg.xid]
            # An aggregate reply's body is one record, the others a list.
            body.extend(msg.body) if isinstance(msg.body, list) else body.append(msg.body)
            if not msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
                waiter.answered(msg.xid)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        """A metered sample of a blocked packet: record the attempt if it is one.

        Only from the live connection of an enforcing switch, from one of our
        block flows (its cookie, in the policy table): a peer that opened an
        OpenFlow connection must not write audit records accusing a host."""
        msg = ev.msg
        dp = msg.datapath
        switch = self.switches.get(dp.id)
        if (switch is None or switch.dp is not dp or not self.policy.switch_spec(dp.id)
                or cookie_clause(msg.cookie) not in SAMPLED or switch.choice is None
                or msg.table_id != switch.choice.profile.exception_table):
            self.counters[("samples_refused", dp.id)] += 1
            return
        self.counters[("samples", dp.id)] += 1
        sample = packet.Packet(msg.data)
        ip = sample.get_protocol(ipv4.ipv4) or sample.get_protocol(ipv6.ipv6)
        segment = sample.get_protocol(tcp.tcp)
        # A connection attempt is a SYN; retransmitted SYNs are attempts too.
        if ip is None or segment is None or not segment.has_flags(tcp.TCP_SYN) or segment.has_flags(tcp.TCP_ACK):
            return
        attempt = attempt_from_sample(
            cookie_clause(msg.cookie), msg.datapath.id, msg.match.get("in_port"), ip.src, ip.dst,
            segment.src_port, segment.dst_port, utc_now(),
        )
        if attempt is not None and self.audit.record(attempt):
            self.counters[("attempts", attempt.direction)] += 1
            self.logger.info(
                "smtp-border: blocked %s SMTP %s:%d -> %s:%d on switch %s port %s (%s)",
                attempt.direction, attempt.src, attempt.src_port, attempt.dst, attempt.dst_port,
                attempt.switch, attempt.in_port, attempt.clause,
            )

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        msg = ev.msg
        description = openflow.describe_error(msg.datapath, msg)
        self.logger.error("smtp-border: OpenFlow error from switch %016x: %s", msg.datapath.id or 0, description)
        for waiter in self._waiters_for(msg.datapath):
            if msg.xid in waiter.xids:
                waiter.errors.append(description)
                waiter.codes.append((msg.type, msg.code))
                if msg.xid in waiter.waiting:
                    waiter.done.set()  # no reply will come

    def _waiters_for(self, dp):
        return list({id(w): w for (d, _), w in list(self._waiters.items()) if d is dp}.values())


def _refused_as_slave(ofp, codes):
    """The switch refused a write because we are slave, or our role as stale."""
    return any(code == (ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE) or code[0] == ofp.OFPET_ROLE_REQUEST_FAILED
               for code in codes)


def _peer(dp):
    address = getattr(dp, "address", None)
    return f"{address[0]}:{address[1]}" if address else "?"


def _rounded(ms):
    return None if ms is None else round(ms, 2)


def _iso(moment):
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
