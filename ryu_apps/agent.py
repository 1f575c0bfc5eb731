"""One agent per connected switch: it keeps that switch at its target.

The core (smtp_border/border.py) says what every switch must hold; an Agent
makes one switch hold it, and is the only thing that writes to it. It has
its own green thread and its own queue, and does its switch's work one job
at a time, in order:

* on connection it *probes* the switch (table features, meter features:
  its profile, smtp_border/pipeline.py) and *reconciles*: reads the
  switch's flows, diffs them with its target, sends the difference in one
  atomic bundle (or, without bundles, in the order its profile proves safe)
  and confirms it with a barrier. It never flushes: a switch that already
  holds its target gets nothing and keeps its counters;
* a change committed in the core reaches it as a numbered diff
  (`submit`); it *pushes* the diffs in order and notes the last one its
  switch confirmed (`held`). A change's answer waits for it up to a
  deadline (ryu_apps/smtp_policy.py), never longer;
* every `audit_seconds` it *audits* its switch (flow counts per owned
  table; every `full_audit_every` audits a full comparison) and repairs
  drift; a failure is retried with backoff (retry_min doubling to
  retry_max).

Because one agent does all of one switch's work in turn, a reconcile can
never read a switch before a change and write after it: the target is
taken, with its change number, after the switch is read and with no wait
in between, and every change numbered after it is pushed after it
(tests/unit/test_agent.py). No agent waits on a shared lock while it talks
to its switch, so nothing one switch does (silence, slowness, floods:
ryu_apps/channel.py) can hold another switch, the API, or a change.

With several controllers (docs/ha.md) the agent also settles its switch's
OpenFlow role with the master key in etcd, writes only as master, and as
slave only reads (its audit reports, its master repairs): ryu_apps/roles.py.
What it reads of its switch and sets before any flow (probe, fragment
handling, meters, flows, counters) is ryu_apps/readings.py.
"""
import collections
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass

from ryu_apps import openflow
from ryu_apps.channel import SwitchFailed
from ryu_apps.readings import FRAG_NX_MATCH, Readings  # noqa: F401  (FRAG_NX_MATCH: where tests find it)
from ryu_apps.roles import Roles, refused_as_slave
from smtp_border.diff import diff_rules
from smtp_border.policy import cyclic_gc_paused as gc_paused
from smtp_border.rules import with_version

LOG = logging.getLogger("smtp_border.agent")

@dataclass(frozen=True)
class Timing:
    """The agents' clocks and patience, in seconds. The app builds one from
    the environment (SMTP_POLICY_AUDIT_SECONDS, SMTP_POLICY_CHANGE_DEADLINE);
    tests pass their own rather than patch module constants.

    * audit_seconds: an in-sync switch's flow counts are read this often
      (three aggregate requests: 5.7 ms at 10,000 flows), and every
      full_audit_every audits (10 minutes) its flows are compared in full,
      which also catches a flow changed in place: reading back 10,000 flows
      costs about 0.55 s of controller CPU, half a core for 100 such
      switches if it were done every minute;
    * change_deadline: how long a change's answer waits for the switches
      (2 s: a change reaches a healthy switch in milliseconds, docs/
      performance.md); one not done by then is reported pending and its
      agent keeps at it;
    * retry_min, retry_max: a switch that failed is tried again after
      0.5 s, 1 s, 2 s, ... up to 30 s;
    * confirm_seconds: how long a slave replica reads a switch for a change
      its master delivers, at most (bounded by the change's deadline too);
    * max_unseen: a slave reads the flows of changes its master delivered
      by their cookies, one request each, up to this many; more, and it
      reads every flow.
    """
    audit_seconds: float = 5.0
    full_audit_every: int = 120
    change_deadline: float = 2.0
    retry_min: float = 0.5
    retry_max: float = 30.0
    confirm_seconds: float = 5.0
    max_unseen: int = 32

    @classmethod
    def from_environment(cls, environ=None):
        """SMTP_POLICY_AUDIT_SECONDS and SMTP_POLICY_CHANGE_DEADLINE (seconds a change's answer waits)."""
        environ = os.environ if environ is None else environ
        return cls(audit_seconds=float(environ.get("SMTP_POLICY_AUDIT_SECONDS") or cls.audit_seconds),
                   change_deadline=float(environ.get("SMTP_POLICY_CHANGE_DEADLINE") or cls.change_deadline))


class Agent(Readings, Roles):
    """What the controller knows of one connected switch, and the green
    thread that keeps it at its target (see the module's docstring)."""

    def __init__(self, app, dp, channel, bundles, hello_at=None, features=None):
        self.app = app  # the wiring: border, mastership, counters, block counters
        self.hub = app.hub
        self.timing = app.timing
        self.dp = dp
        self.channel = channel
        self.dpid = dp.id
        self.hello_at = hello_at  # monotonic time of its hello: install time from connect
        # What its features reply said: (n_tables, n_buffers, capabilities, auxiliary_id).
        self.features = features
        self.n_tables = features[0] if features else None
        # ms of each step before its first flow on this connection (probe,
        # config, meters, count): the fixed cost of a connection, logged with the install.
        self.steps = {}
        self.in_sync = False  # holds exactly border.flows(dpid), in `version`
        self.held = 0  # the last change number it is known to hold (with in_sync)
        self.lagging = False  # missed a change's deadline: not waited for until it holds the latest
        self.version = 0  # policy-table version (alternates on switches without bundles)
        self.bundles = bundles  # False once it refused one
        self.pending = "connected; reading its flows"  # why it is not in sync, None when it is
        self.failures = 0  # consecutive failed attempts
        self.crash = None  # "Type: message" of our own bug in its last attempt (a 500 for changes), else None
        self.audits = 0
        self.last_audit = None  # Unix time
        self.last_repair = None
        self.drift = False  # an audit found its flows changed behind the controller's back
        self.flow_count = None  # flows in the owned tables at the last reading
        self.audit_ms = None  # how long the last audit took: counts only, and with a full comparison
        self.full_audit_ms = None
        self.meter_rate = None  # audit meter rate set on the switch
        self.fragments = None  # its fragment handling once checked: "nx-match", or why not
        self.choice = None  # pipeline.Choice: its profile, once probed
        self.capabilities = None  # pipeline.Capabilities it was probed with
        self.recheck = False  # probed from memory: ask the switch once its flows are in
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
        self.queue = collections.deque()  # (change number, RuleDiff or None), oldest first
        self._waiting = []  # (change number, Event): answers waiting for it to hold a change
        self._verify = []  # Events of verifications asked (GET /switches?verify=1)
        self._bundle_ids = itertools.count(1)
        self.wake = self.hub.Event()
        self.thread = None

    # -- what the wiring asks -----------------------------------------------------

    def start(self):
        self.thread = self.hub.spawn(self.run)
        return self

    @property
    def current(self):
        """Still the live connection of its dpid."""
        return self.app.switches.get(self.dpid) is self and not self.channel.closed

    @property
    def tables(self):
        """The tables its profile owns: read, audited and reconciled."""
        return self.choice.profile.table_ids

    @property
    def enforces(self):
        """Holds the policy in force: written and confirmed by us, or, as a
        slave, read and found so (its master wrote it)."""
        return self.in_sync or (self.role == "slave" and self.holds)

    def submit(self, number, diff):
        """Change `number` was committed; `diff` takes a switch holding the
        change before it to this one (None: unknown for this switch)."""
        self.queue.append((number, diff))
        if self.in_sync:
            # One that is not is retried on its own schedule: a change must
            # not cut a failing switch's backoff short (each REST change used
            # to retry every failing switch at once).
            self.wake.set()

    def waiter(self, number):
        """An Event set once the switch holds change `number` (or the agent
        stops); whether it does is `holds_change(number)`."""
        event = self.hub.Event()
        if self.holds_change(number) or not self.current:
            event.set()
        else:
            self._waiting.append((number, event))
        return event

    def holds_change(self, number):
        return self.in_sync and self.held >= number

    def verify(self):
        """Ask for a full comparison now; an Event set when it is done."""
        event = self.hub.Event()
        if not self.in_sync:
            event.set()
            return event
        self._verify.append(event)
        self.wake.set()
        return event

    def unsynced(self, reason):
        self.in_sync = False
        self.pending = reason
        self.wake.set()

    def stopped(self):
        """Its connection went: answer whoever waits on it."""
        for _, event in self._waiting:
            event.set()
        self._waiting = []
        for event in self._verify:
            event.set()
        self._verify = []
        self.wake.set()

    # -- the loop -------------------------------------------------------------------

    def run(self):
        """Keep the switch at its target until its connection goes. Nothing
        ends this loop but that: every failure, ours included, is logged and
        retried."""
        delay = 0.0
        timing = self.timing
        while self.current:
            if self.in_sync and not self.queue and not self._verify:
                self.wake.wait(timeout=timing.audit_seconds)
            elif not self.in_sync and delay:
                self.wake.wait(timeout=delay)
            self.wake.clear()
            if not self.current:
                break
            try:
                mastership = self.app.mastership
                if mastership is not None and not self.writes():
                    if self.queue:
                        # Not ours to write now (its master's, or ours once the
                        # lease is refreshed): a reconcile takes them in later.
                        self.queue.clear()
                        self.in_sync = False
                    if self.role == "master" and mastership.holds_lease:
                        # Late by our clock, not lost: write again once the lease is refreshed.
                        self.pending = "lease refresh late: not writing until it is refreshed"
                        delay = timing.retry_min
                        continue
                    self._timed("role", self.settle_role)
                    if self.role != "master":
                        # A slave: woken when its master goes or a change
                        # comes; else it claims again after an audit interval.
                        # Meanwhile it reads the switch (audit and metrics on
                        # every replica), a second after a difference.
                        if self.role == "slave":
                            self.observe()
                        self.failures = 0
                        delay = timing.audit_seconds if self.holds else min(1.0, timing.audit_seconds)
                        continue
                if self.in_sync and self.queue:
                    self.push_queued()
                elif self.in_sync and self._verify:
                    self.audit(full=True)
                    self._verified()
                elif self.in_sync:
                    held = self.audit()
                    if not self.in_sync:
                        self.reconcile(held)
                else:
                    self.reconcile()
                if self.recheck and self.in_sync:
                    self.recheck_probe()
                self.failures, delay, self.crash = 0, 0.0, None
            except Exception as err:
                self.failures += 1
                delay = min(timing.retry_max, timing.retry_min * 2 ** (self.failures - 1))
                if mastership is not None and refused_as_slave(self.dp.ofproto, getattr(err, "codes", ())):
                    # Another replica is master now (we were fenced), or our
                    # generation id is stale: settle again, at once the first
                    # time, then backing off (a key that stays stale must not
                    # make a busy loop).
                    LOG.warning("smtp-border: switch %016x refuses our writes or role: another controller is"
                                " master now; stepping down", self.dpid)
                    self.role = None
                    delay = 0.0 if self.failures == 1 else delay
                if isinstance(err, SwitchFailed) and err.codes:
                    self.forget_probe()  # it refused something: ask it again next time
                if isinstance(err, SwitchFailed):
                    LOG.error("smtp-border: switch %016x: policy NOT applied (attempt %d, retrying in %.1f s): %s",
                              self.dpid, self.failures, delay, err)
                else:
                    self.crash = f"{type(err).__name__}: {err}"
                    LOG.exception("smtp-border: switch %016x: reconciling crashed (attempt %d, retrying in %.1f s)",
                                  self.dpid, self.failures, delay)
                self.in_sync = False
                self.pending = f"{err} (attempt {self.failures}, next in {delay:.1f} s)"
                self._verified()
        self.stopped()

    def _progressed(self):
        """It holds more than before: answer the changes waiting for it."""
        if self.app.changes <= self.held and self.in_sync:
            self.lagging = False
        still = []
        for number, event in self._waiting:
            (event.set() if self.holds_change(number) else still.append((number, event)))
        self._waiting = still

    def _verified(self):
        for event in self._verify:
            event.set()
        self._verify = []

    # -- changes ----------------------------------------------------------------------

    def push_queued(self):
        """Send the queued changes in order; one the switch holds already
        (a reconcile took it in) is skipped."""
        while self.queue and self.in_sync:
            number, diff = self.queue[0]
            if number <= self.held:
                self.queue.popleft()
                continue
            if diff is None:
                self.queue.popleft()
                self.unsynced("a change it was not tracked for; reconciling")
                return
            if diff:
                try:
                    self.push(diff)
                except SwitchFailed as err:
                    self.queue.popleft()
                    self.app.counters[("push_failures", self.dpid)] += 1
                    LOG.error("smtp-border: switch %016x: change NOT applied, retrying: %s", self.dpid, err)
                    self.unsynced(f"change not confirmed: {err}; retrying")
                    raise
            if self.queue and self.queue[0][0] == number:
                self.queue.popleft()
            if self.in_sync:
                self.held = max(self.held, number)
            self._progressed()

    def push(self, diff):
        """Send an in-sync switch the diff of one change."""
        dp = self.dp
        started = time.monotonic()
        with contextlib.nullcontext() if len(diff) < 1000 else gc_paused():
            self.read_counters_before(diff)
            self.ensure_fragments()
            self.ensure_meter()
            if self.bundles:
                try:
                    self.channel.exchange(openflow.bundle(dp, next(self._bundle_ids), openflow.apply_diff(diff)),
                                          [self._barrier()])
                    how = "in one bundle"
                except SwitchFailed as err:
                    if not _refuses_bundles(dp.ofproto, err.codes):
                        raise
                    self._no_bundles()
                    return self.reconcile()
            else:
                phases = self.target().phases(diff, self.version)
                if phases is None:
                    # Not just allows: the classification changes. Read the switch
                    # and take it there in the two-phase order.
                    return self.reconcile()
                for phase in phases:
                    self.channel.exchange([openflow.flow_mod(dp, op, r) for op, r in phase], [self._barrier()])
                how = "with ordered flow mods"
        LOG.info(
            "smtp-border: switch %016x %s: %d flows added or changed, %d removed %s, confirmed by barrier (%.1f ms)",
            self.dpid, self.role_name, len(diff.add), len(diff.delete), how, (time.monotonic() - started) * 1000,
        )

    def _no_bundles(self):
        LOG.warning("smtp-border: switch %016x refuses bundles; using ordered flow mods", self.dpid)
        self.bundles = False

    def _timed(self, step, do):
        """Do one step before the first flows, noting its ms in `steps` while
        the connection's first install is under way."""
        if self.hello_at is None:
            return do()
        started = time.monotonic()
        try:
            return do()
        finally:
            self.steps[step] = self.steps.get(step, 0.0) + (time.monotonic() - started) * 1000

    def target(self):
        """The core's one answer for this switch (smtp_border/border.py Target):
        taken afresh, since a change may have come since the last one."""
        return self.app.border.target(self.dpid)

    @property
    def role_name(self):
        return "enforcing" if self.app.border.enforcing(self.dpid) else "inside (forwarding only)"

    # -- reconcile and audit -------------------------------------------------------

    def reconcile(self, held=None):
        """Make the switch hold exactly its target, from whatever it holds
        now: read it (unless `held`, what an audit just read), then take the
        target and its change number with no wait in between, send the
        difference, confirm."""
        dp = self.dp
        started = time.monotonic()
        with gc_paused():
            if self.choice is None:
                self.probe()
            over = self.target().over
            if over is not None:
                raise SwitchFailed(f"{over}: nothing sent (raise switches[].table_size if the switch has more,"
                                   " or grant fewer exceptions)")
            self._timed("config", self.ensure_fragments)
            self._timed("meters", self.ensure_meter)
            rules, foreign = held or self._timed("count", self.read_flows)
            # From here to the write nothing waits: the target is the one of change `number`.
            number, target = self.app.changes, self.target()
            desired = target.flows
            if self.bundles:
                diff = diff_rules(rules, desired)
                # A foreign flow in a desired flow's place is replaced by its add, not deleted after it.
                keys = {r.key for r in desired} if foreign else ()
                messages = openflow.apply_diff(diff) + [openflow.delete_foreign(dp, f) for f in foreign
                                                        if f.key not in keys]
                sent = len(messages)
                if sent:
                    try:
                        self.channel.exchange(openflow.bundle(dp, next(self._bundle_ids), messages), [self._barrier()])
                    except SwitchFailed as err:
                        if not _refuses_bundles(dp.ofproto, err.codes):
                            raise
                        self._no_bundles()
                        return self.reconcile()
                how, version = "in one bundle", 0
                counts = (len(diff.add), len(diff.delete) + len(foreign))
            else:
                version, phases = target.plan(list(rules) + foreign)
                for phase in phases:
                    self.channel.exchange([openflow.flow_mod(dp, op, item) for op, item in phase], [self._barrier()])
                how = f"with ordered flow mods ({len(phases)} phases)"
                sent = sum(len(p) for p in phases)
                counts = (sum(op == "add" for p in phases for op, _ in p),
                          sum(op == "delete" for p in phases for op, _ in p))
        self.version, self.in_sync, self.pending = version, True, None
        self.held = max(self.held, number)
        self.flow_count = len(desired)
        if sent:
            self.last_repair = time.time()
        elapsed = (time.monotonic() - started) * 1000
        hello_at, self.hello_at = self.hello_at, None
        since_hello = "" if hello_at is None else f", {(time.monotonic() - hello_at) * 1000:.1f} ms after its hello"
        if hello_at is not None and self.steps:
            # The fixed cost of this connection, before its first flow.
            since_hello += "; before the first flow: " + ", ".join(f"{k} {v:.1f} ms" for k, v in self.steps.items())
        self.steps = {}
        self.remember_probe()
        if sent:
            LOG.info(
                "smtp-border: switch %016x %s: %d flows installed %s, confirmed by barrier (%.1f ms%s);"
                " %d added or changed, %d removed, %d already in place",
                self.dpid, self.role_name, len(desired), how, elapsed, since_hello,
                counts[0], counts[1], len(desired) - counts[0],
            )
        else:
            LOG.info("smtp-border: switch %016x %s: %d flows installed already, nothing sent (%.1f ms%s)",
                     self.dpid, self.role_name, len(desired), elapsed, since_hello)
        if self.drift:
            self.drift = False
            self.app.counters[("repairs", self.dpid)] += 1
        self._progressed()

    def audit(self, full=False):
        """Check an in-sync switch for drift; mark it unsynced if found, and
        return what was read of it (rules, foreign flows) for the repair. A
        change committed while it reads makes the reading moot: it is not
        judged (the change's push comes next)."""
        dp = self.dp
        started = time.monotonic()
        number = self.app.changes
        desired = self.target().flows
        config = dp.ofproto_parser.OFPGetConfigRequest(dp)
        counted, replies = self.count(desired, [config])
        full = full or self.audits % self.timing.full_audit_every == 0
        if self.app.changes != number or self.queue:
            return None
        flags = replies[config.xid][0].flags & dp.ofproto.OFPC_FRAG_MASK
        if self.fragments == "nx-match" and flags != FRAG_NX_MATCH:
            self.app.counters[("drift", "config")] += 1
            LOG.warning("smtp-border: switch %016x DRIFT found by audit: fragment handling changed to %d; repairing",
                        self.dpid, flags)
            self.fragments = None
            self.in_sync, self.drift = False, True
            self.pending = "drift: fragment handling changed; repairing"
            return None
        if not full and counted:
            self.audit_ms = (time.monotonic() - started) * 1000
            return None
        rules, foreign = self.read_flows(dump=True)
        if self.app.changes != number or self.queue:
            return None
        desired = self.target().flows
        target = desired if self.version == 0 else {with_version(r, self.version) for r in desired}
        missing = len({r.key for r in target} - {r.key for r in rules})
        diff = diff_rules(rules, target)
        extra = len(diff.delete) + len(foreign)
        changed = len(diff.add) - missing
        self.full_audit_ms = (time.monotonic() - started) * 1000
        if not (missing or extra or changed):
            return None
        for kind, n in (("missing", missing), ("extra", extra), ("changed", changed)):
            self.app.counters[("drift", kind)] += n
        LOG.warning("smtp-border: switch %016x DRIFT found by audit: %d flows missing, %d extra, %d changed; repairing",
                    self.dpid, missing, extra, changed)
        self.in_sync, self.drift = False, True
        self.pending = f"drift: {missing} missing, {extra} extra, {changed} changed; repairing"
        return rules, foreign

    def count(self, desired, extra=()):
        """An audit's first reading: the flows in each owned table (one
        aggregate request each, with `extra` requests in the same write),
        noted on the switch. (Whether every table holds as many flows as
        `desired` puts there, {xid: replies}.)"""
        requests = [self._aggregate(table) for table in self.tables]
        replies = self.channel.exchange([], requests + list(extra))
        counts = {table: replies[r.xid][0].flow_count for table, r in zip(self.tables, requests)}
        self.audits += 1
        self.last_audit, self.flow_count = time.time(), sum(counts.values())
        expected = collections.Counter(r.table for r in desired)
        return all(counts[t] == expected.get(t, 0) for t in self.tables), replies

    # -- small requests --------------------------------------------------------------

    def _barrier(self):
        return self.dp.ofproto_parser.OFPBarrierRequest(self.dp)

    def _aggregate(self, table):
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        return parser.OFPAggregateStatsRequest(self.dp, 0, table, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0, parser.OFPMatch())


def _refuses_bundles(ofp, codes):
    unsupported = {ofp.OFPBRC_BAD_EXPERIMENTER, ofp.OFPBRC_BAD_EXP_TYPE, ofp.OFPBRC_BAD_TYPE}
    return any(t == ofp.OFPET_BAD_REQUEST and c in unsupported for t, c in codes)
