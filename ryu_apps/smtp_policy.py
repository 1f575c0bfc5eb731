"""Ryu app: enforce the campus SMTP border policy on OpenFlow 1.3 switches.

    SMTP_POLICY_FILE=/etc/smtp-border/policy.yaml ryu-manager ryu_apps.smtp_policy

The policy is compiled (smtp_border.compiler) and installed proactively when a
switch connects, replacing whatever the switch had in the tables the app owns
in one atomic bundle, then confirmed with a barrier. Later changes (REST calls,
reloads) send each switch only the difference, again in one bundle. No flow
sends packets to the controller, and no flow times out, so the switch keeps
enforcing while the controller is away.
"""
import collections
import contextlib
import gc
import itertools
import os
import sys
import time
import weakref

from ryu.app.wsgi import WSGIApplication
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, HANDSHAKE_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.lib.packet import ipv4, ipv6, packet, tcp
from ryu.ofproto import ofproto_v1_3

from ryu_apps import openflow, rest, wire
from smtp_border.audit import AuditLog, attempt_from_sample, default_log_path
from smtp_border.compiler import ExceptionIndex, compile_switch
from smtp_border.diff import RuleDiff, diff_rules
from smtp_border.policy import PolicyError, utc_now
from smtp_border.rules import AUDIT_METER_ID, cookie_clause
from smtp_border.store import PolicyStore

POLICY_FILE_ENV = "SMTP_POLICY_FILE"
STATE_FILE_ENV = "SMTP_POLICY_STATE"
# "auto" (default): use ONF bundles, and fall back to ordered flow mods for a
# switch that refuses them. "off": never use bundles.
BUNDLES_ENV = "SMTP_POLICY_BUNDLES"
AUDIT_LOG_ENV = "SMTP_POLICY_AUDIT_LOG"  # overrides audit.log of the policy
DEFAULT_POLICY_FILE = "policy.yaml"
# How long a switch may take to answer before we call the request failed.
REPLY_TIMEOUT = 30.0
# How often expiry times are checked: an expired exception stops being
# enforced within this many seconds.
EXPIRY_CHECK_SECONDS = 10.0


_gc_pauses = 0  # pushes under way that hold the cyclic garbage collector off


@contextlib.contextmanager
def gc_paused():
    """Hold off Python's cyclic garbage collector, across nested and
    concurrent (green-thread) users. Compiling and encoding 10,000 flows
    makes some 10^5 objects at once, and the collections that triggers walk
    every object of the controller: up to a third of a full install, in
    spikes. The pause lasts one push; refcounting frees memory meanwhile."""
    global _gc_pauses
    _gc_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        _gc_pauses -= 1
        if not _gc_pauses:
            gc.enable()


class SwitchFailed(Exception):
    def __init__(self, message, codes=()):
        super().__init__(message)
        self.codes = codes  # (type, code) of each OpenFlow error


def _refuses_bundles(ofp, codes):
    unsupported = {ofp.OFPBRC_BAD_EXPERIMENTER, ofp.OFPBRC_BAD_EXP_TYPE, ofp.OFPBRC_BAD_TYPE}
    return any(t == ofp.OFPET_BAD_REQUEST and c in unsupported for t, c in codes)


class _Waiter:
    """A request to one switch, waiting for its reply (barrier or multipart)."""

    def __init__(self, dpid, request_xid, xids=()):
        self.dpid = dpid
        self.request_xid = request_xid
        self.xids = set(xids)  # messages whose errors count against this request
        self.errors = []
        self.codes = []
        self.replies = []
        self.done = hub.Event()

    def fail(self, reason):
        self.errors.append(reason)
        self.done.set()


class SmtpPolicy(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            self.store = PolicyStore(
                os.environ.get(POLICY_FILE_ENV, DEFAULT_POLICY_FILE), os.environ.get(STATE_FILE_ENV) or None
            )
        except PolicyError as err:
            # One line and a non-zero exit, not a traceback: this is the
            # operator's file, not our bug.
            sys.exit(f"smtp-border: {err}")
        self._log_policy()
        self.audit = AuditLog(
            os.environ.get(AUDIT_LOG_ENV) or default_log_path(self.store.policy_file, self.policy.audit.log)
        )
        self.logger.info("smtp-border: blocked attempts are logged to %s", self.audit.path)
        self.counters = collections.Counter()  # reloads, reload_failures, samples[dpid]
        self.last_change = time.time()
        self.datapaths = {}  # dpid -> connected Datapath
        # Datapath -> when its hello arrived, to report install time from connect.
        self._hello_at = weakref.WeakKeyDictionary()
        self.installed = {}  # dpid -> set of FlowRule confirmed on the switch
        self._waiters = {}  # (dpid, xid) -> _Waiter
        self._bundle_ids = itertools.count(1)
        self.bundles = {}  # dpid -> False once a switch refused a bundle
        self.meter_rates = {}  # dpid -> audit meter rate set on the switch
        self.bundles_wanted = os.environ.get(BUNDLES_ENV, "auto").lower() != "off"
        # One change at a time, across all switches: changes never interleave,
        # and concurrent REST requests are applied one after the other.
        self.change_lock = hub.Semaphore(1)
        self.exception_index = ExceptionIndex(self.policy)
        rest.register(kwargs["wsgi"], self)
        self._active_exceptions = {e.id for e in self.policy.active_exceptions()}
        hub.spawn(self._expiry_loop)

    @property
    def policy(self):
        return self.store.policy

    def _log_policy(self):
        p = self.policy
        now = utc_now()
        expired = [e for e in p.exceptions if not e.is_active(now)]
        if p.switches is None:
            where = "every switch, by addresses (no switches listed)"
        else:
            where = "; ".join(f"dpid {s.dpid:#x} uplinks {list(s.uplinks)}" for s in p.switches) or "no switch"
        self.logger.info(
            "smtp-border: policy %s: campus %s, smtp ports %s, %d gateway(s), %d exception(s) "
            "(%d from the API, %d expired); enforcing on %s",
            self.store.policy_file, ", ".join(map(str, p.campus)), list(p.smtp_ports), len(p.gateways),
            len(p.exceptions), len(self.store.api_exceptions), len(expired), where,
        )
        for e in expired:
            self.logger.warning(
                "smtp-border: exception %s (%s) expired at %s and is not enforced",
                e.address, e.direction.value, e.expires.isoformat(),
            )

    # -- switch lifecycle -----------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPHello, HANDSHAKE_DISPATCHER)
    def _hello(self, ev):
        self._hello_at[ev.msg.datapath] = time.monotonic()

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            self.datapaths[dp.id] = dp
            self.installed.pop(dp.id, None)
            self.meter_rates.pop(dp.id, None)
            # Waiting for the barrier needs this handler's thread free to
            # deliver the reply, so the sync runs in its own green thread.
            hub.spawn(self._sync_switch, dp)
        elif dp.id is not None and self.datapaths.get(dp.id) is dp:
            del self.datapaths[dp.id]
            self.installed.pop(dp.id, None)
            for waiter in self._waiters_for(dp.id):
                waiter.fail("switch disconnected before answering")
            self.logger.info("smtp-border: switch %016x disconnected; its flows stay in force", dp.id)

    def _sync_switch(self, dp):
        with self.change_lock:
            if self.datapaths.get(dp.id) is dp and dp.id not in self.installed:
                self._push(dp)

    def apply_change(self, change):
        """Commit a validated change and bring every switch to it (lock held).

        A change of exceptions alone (REST) is worked out from the exception
        index: the flows of the exceptions concerned, whatever the size of the
        policy. Anything else (a reload) is compiled in full and diffed."""
        incremental = change.file_policy is self.store.file_policy and self.exception_index is not None
        self.store.commit(change)
        if incremental:
            diff = self.exception_index.update(change.added, change.removed)
            # Added exceptions are active (expired ones are refused), removed ones no longer count.
            self._active_exceptions.difference_update(e.id for e in change.removed)
            self._active_exceptions.update(e.id for e in change.added)
            return self.changed(self.push_policy(diff), recount=False)
        self.exception_index = None
        return self.changed(self.push_policy())

    def push_policy(self, exception_diff=None):
        """Bring every connected switch to the policy in force, in parallel;
        call with change_lock held. Returns ({dpid: what _push sent},
        {dpid: error}) once every switch has confirmed or failed."""
        threads = {dpid: hub.spawn(self._push, dp, exception_diff) for dpid, dp in list(self.datapaths.items())}
        done, failed = {}, {}
        for dpid, thread in threads.items():
            result = thread.wait()
            if isinstance(result, str):
                failed[dpid] = result
            elif result is not None:
                done[dpid] = result
        return done, failed

    def _push(self, dp, exception_diff=None):
        incremental = exception_diff is not None and dp.id in self.installed
        with contextlib.nullcontext() if incremental else gc_paused():
            return self._push_now(dp, exception_diff)

    def _push_now(self, dp, exception_diff):
        """Make the switch hold exactly the compiled rules.

        A switch we know the flows of gets only the difference. One we do not
        (it just connected, or the controller restarted, or a change failed)
        gets a delete of everything in the owned tables and every flow, in the
        same atomic bundle, so stale flows go and no packet sees a table
        without the policy. Returns {"added", "removed", "flows"} counts,
        None if there was nothing to send, or an error message."""
        started = time.monotonic()
        known = self.installed.get(dp.id)
        if exception_diff is not None and known is not None:
            # Exception flows are the same on every enforcing switch, and absent on inside ones.
            diff = exception_diff if self.policy.switch_spec(dp.id) else RuleDiff((), ())
            rules = None  # `known` with the diff applied, once the switch confirms it
        else:
            rules = compile_switch(self.policy, dp.id)
            diff = None if known is None else diff_rules(known, rules)
        if diff is not None and not diff:
            return None
        counts = (len(rules), None) if diff is None else (len(diff.add), len(diff.delete))
        try:
            self._ensure_meter(dp)
            try:
                how = self._send(dp, rules, diff)
            except SwitchFailed as err:
                if not (self.bundles.get(dp.id, self.bundles_wanted) and _refuses_bundles(dp.ofproto, err.codes)):
                    raise
                self.logger.warning("smtp-border: switch %016x refuses bundles; using ordered flow mods", dp.id)
                self.bundles[dp.id] = False
                if rules is None:
                    rules = (known - set(diff.delete)) | set(diff.add)
                how = self._send(dp, rules, None)  # a refused bundle applied nothing: start over
        except SwitchFailed as err:
            self.installed.pop(dp.id, None)  # unknown now: the next push replaces everything
            self.logger.error("smtp-border: switch %016x: policy NOT applied: %s", dp.id, err)
            return str(err)
        connected = self.datapaths.get(dp.id) is dp
        if rules is None and connected:
            # In place: copying 10,000 rules per change would cost more than the change.
            known.difference_update(diff.delete)
            known.update(diff.add)
            rules = known
        elif rules is None:
            rules = (known - set(diff.delete)) | set(diff.add)
        elif connected:
            self.installed[dp.id] = set(rules)
        # A switch that went away after confirming stays unknown: its next
        # connection gets a full install.
        elapsed = (time.monotonic() - started) * 1000
        role = "enforcing" if self.policy.switch_spec(dp.id) else "inside (forwarding only)"
        hello_at = self._hello_at.pop(dp, None)
        if diff is None:
            since_hello = "" if hello_at is None else f", {(time.monotonic() - hello_at) * 1000:.1f} ms after its hello"
            self.logger.info(
                "smtp-border: switch %016x %s: %d flows installed %s, confirmed by barrier (%.1f ms%s)",
                dp.id, role, counts[0], how, elapsed, since_hello,
            )
        else:
            self.logger.info(
                "smtp-border: switch %016x %s: %d flows added or changed, %d removed %s, confirmed by barrier (%.1f ms)",
                dp.id, role, counts[0], counts[1], how, elapsed,
            )
        return {"added": counts[0], "removed": counts[1], "flows": len(rules)}

    def _ensure_meter(self, dp):
        """The audit meter must exist, at the policy's rate, before any flow uses it."""
        rate = self.policy.audit.sample_rate
        if not rate or not self.policy.switch_spec(dp.id) or self.meter_rates.get(dp.id) == rate:
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        # Ask first rather than try and fail: an error here would read like a
        # fault. (Asking for one unknown meter is an error too, so ask for all.)
        meters = self._request(dp, [], parser.OFPMeterConfigStatsRequest(dp, 0, ofp.OFPM_ALL))
        exists = any(m.meter_id == AUDIT_METER_ID for m in meters)
        command = ofp.OFPMC_MODIFY if exists else ofp.OFPMC_ADD
        self._request(dp, [openflow.set_meter(dp, AUDIT_METER_ID, rate, command)], parser.OFPBarrierRequest(dp))
        self.meter_rates[dp.id] = rate

    def _expiry_loop(self):
        while True:
            hub.sleep(EXPIRY_CHECK_SECONDS)
            with self.change_lock:
                self.expire(utc_now())

    def expire(self, now):
        """Withdraw the exceptions whose time has come, as one incremental change."""
        # One pass, and only exceptions with an expiry time are tested: this
        # runs every EXPIRY_CHECK_SECONDS over policies of 10,000 exceptions.
        expired = [
            e for e in self.policy.exceptions
            if e.expires is not None and not e.is_active(now) and e.id in self._active_exceptions
        ]
        for e in expired:
            self.logger.warning(
                "smtp-border: exception %s %s (%s, %s) expired at %s; no longer enforced",
                e.id, e.address, e.direction.value, e.reason, e.expires.isoformat(),
            )
        if expired:
            self._active_exceptions.difference_update(e.id for e in expired)
            self.changed(self.push_policy(self.exception_index.update(removed=expired)), recount=False)

    def changed(self, pushed, recount=True):
        """Note a change that reached the switches; returns what push_policy did.
        `recount`: find the active exceptions anew (a whole-policy scan)."""
        done, failed = pushed
        if not failed:
            self.last_change = time.time()
        if recount:
            self._active_exceptions = {e.id for e in self.policy.active_exceptions()}
        if self.exception_index is None:
            self.exception_index = ExceptionIndex(self.policy)
        return pushed

    # -- talking to switches --------------------------------------------------

    def _send(self, dp, rules, diff):
        """Bring the switch from its known flows (diff) or from anything (diff
        None) to `rules`, atomically where the switch takes bundles."""
        barrier = dp.ofproto_parser.OFPBarrierRequest
        if self.bundles.get(dp.id, self.bundles_wanted):
            messages = openflow.replace_all(rules) if diff is None else openflow.apply_diff(diff)
            self._request(dp, openflow.bundle(dp, next(self._bundle_ids), messages), barrier(dp))
            return "in one bundle"
        if diff is not None:
            self._request(dp, openflow.apply_diff(diff), barrier(dp))
            return "with ordered flow mods"
        # No bundle and unknown flows: add every flow first (an add replaces a
        # flow with the same key in place), then delete whatever else is
        # there. Meanwhile the switch holds the union of its old flows and the
        # policy: what both block stays blocked (unless a stale flow already
        # let it through) and what both allow stays allowed.
        self._request(dp, [wire.add_flow(r) for r in rules], barrier(dp))
        wanted = {openflow.flow_key(r.table, r.priority, openflow.match_of(dp.ofproto_parser, r.match)) for r in rules}
        stale = [f for f in self.switch_flows(dp) if openflow.flow_key(f.table_id, f.priority, f.match) not in wanted]
        self._request(dp, [openflow.delete_reported_flow(dp, f) for f in stale], barrier(dp))
        return "with ordered flow mods"

    def _request(self, dp, before, request):
        """Send `before` then `request`, and wait for the reply to `request`.

        Raises SwitchFailed if the switch reports an error for any of them or
        does not answer in time. Returns the reply bodies (multipart)."""
        messages = before + [request]
        for msg in messages:
            dp.set_xid(msg)
            msg.serialize()
        key = (dp.id, request.xid)
        waiter = self._waiters[key] = _Waiter(dp.id, request.xid, (m.xid for m in messages))
        try:
            # One write for the lot: a full install is 20,000 messages, and
            # one send-queue entry each would cost more than encoding them.
            if not dp.send(b"".join(msg.buf for msg in messages)):
                raise SwitchFailed("connection to the switch closed while sending")
            if not waiter.done.wait(timeout=REPLY_TIMEOUT):
                raise SwitchFailed(f"no reply within {REPLY_TIMEOUT:.0f} s")
        finally:
            del self._waiters[key]
        if waiter.errors:
            raise SwitchFailed(
                f"switch reported {len(waiter.errors)} error(s), first: {waiter.errors[0]}", tuple(waiter.codes)
            )
        return waiter.replies

    def switch_flows(self, dp):
        """Every flow on the switch, as OFPFlowStats."""
        ofp, parser = dp.ofproto, dp.ofproto_parser
        request = parser.OFPFlowStatsRequest(
            dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0, parser.OFPMatch()
        )
        return self._request(dp, [], request)

    def switch_status(self, dpid):
        """What GET /smtp/v1/switches reports for one switch."""
        spec = self.policy.switch_spec(dpid)
        dp = self.datapaths.get(dpid)
        status = {
            "dpid": f"{dpid:016x}",
            "name": spec.name if spec else None,
            "role": "enforcing" if spec else "inside",
            "uplinks": list(spec.uplinks) if spec else [],
            "connected": dp is not None,
            "flow_count": None,
            "in_sync": None,
        }
        if dp is None:
            return status
        try:
            flows = self.switch_flows(dp)
        except SwitchFailed as err:
            status["error"] = str(err)
            return status
        actual = sorted(
            openflow.flow_signature(f.table_id, f.priority, f.cookie, f.match, f.instructions) for f in flows
        )
        expected = sorted(openflow.expected_signature(dp, r) for r in compile_switch(self.policy, dpid))
        status["flow_count"] = len(flows)
        status["in_sync"] = actual == expected
        return status

    def known_dpids(self):
        listed = {s.dpid for s in self.policy.switches or ()}
        return sorted(listed | set(self.datapaths))

    # -- replies --------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev):
        waiter = self._waiters.get((ev.msg.datapath.id, ev.msg.xid))
        if waiter is not None:
            waiter.done.set()

    @set_ev_cls(
        [ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPMeterConfigStatsReply, ofp_event.EventOFPMeterStatsReply],
        MAIN_DISPATCHER,
    )
    def _multipart_reply(self, ev):
        msg = ev.msg
        waiter = self._waiters.get((msg.datapath.id, msg.xid))
        if waiter is not None:
            waiter.replies.extend(msg.body)
            if not msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
                waiter.done.set()

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        """A metered sample of a blocked packet: record the attempt if it is one."""
        msg = ev.msg
        self.counters[("samples", msg.datapath.id)] += 1
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
            self.logger.info(
                "smtp-border: blocked %s SMTP %s:%d -> %s:%d on switch %s port %s (%s)",
                attempt.direction, attempt.src, attempt.src_port, attempt.dst, attempt.dst_port,
                attempt.switch, attempt.in_port, attempt.clause,
            )

    def meter_stats(self, dp):
        """OFPMeterStats of the audit meter (empty without one)."""
        return self._request(dp, [], dp.ofproto_parser.OFPMeterStatsRequest(dp, 0, AUDIT_METER_ID))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        msg = ev.msg
        description = openflow.describe_error(msg.datapath, msg)
        self.logger.error("smtp-border: OpenFlow error from switch %016x: %s", msg.datapath.id or 0, description)
        for waiter in self._waiters_for(msg.datapath.id):
            if msg.xid in waiter.xids:
                waiter.errors.append(description)
                waiter.codes.append((msg.type, msg.code))
                if msg.xid == waiter.request_xid:
                    waiter.done.set()  # no reply will come

    def _waiters_for(self, dpid):
        return [w for w in list(self._waiters.values()) if w.dpid == dpid]
