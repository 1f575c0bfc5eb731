"""One OpenFlow connection: request and reply, liveness, and limits.

A Channel stands beside one Datapath (Ryu's connection) and is the only way
the app talks to that switch. It keeps what a hostile or broken peer could
otherwise turn against the controller bounded, per connection:

* **Replies.** `exchange()` sends messages and requests in one write and
  waits for every reply, up to a deadline per call. A multipart reply is
  gathered only up to `Limits.max_reply_bytes`; a peer that answers with
  OFPMPF_REPLY_MORE forever is closed once it passes it, instead of growing
  the controller (7.1 GB in 30 s, before). The limit is derived from the
  policy: 400 bytes a flow (an OpenFlow 1.3 flow-stats entry of this app's
  flows is 96 to 200 bytes) for twice the flows the switch should hold,
  and never below 16 MiB.
* **Liveness.** A switch that has said nothing for `echo_idle` seconds is
  sent an echo request; one that does not answer within `echo_timeout` is
  closed: a silent switch is dropped within seconds (5 + 3 by default), not
  when TCP gives up. Ryu's own echo loop is off by default, and os-ken's too.
* **Floods.** Errors, echo requests and packet-ins are each limited per
  connection (token buckets: a rate and a burst). What is over the limit is
  dropped before any work, counted (`dropped`, exported as
  smtp_border_channel_dropped), and logged once per `log_interval`, never
  once per message: 2,000 errors every 50 ms made 155,000 log lines a
  minute before.

Time comes from an injected `clock` (time.monotonic by default), so the
limits and liveness are tested by moving a clock, not by sleeping.
"""
import collections
import logging
import time
from dataclasses import dataclass

LOG = logging.getLogger("smtp_border.channel")


class SwitchFailed(Exception):
    def __init__(self, message, codes=()):
        super().__init__(message)
        self.codes = codes  # (type, code) of each OpenFlow error


@dataclass(frozen=True)
class Limits:
    """What one connection may cost. The defaults are for a campus border:
    a switch answers a request within seconds (reply_timeout bounds a wait
    that a deadline does not), speaks at least every few seconds when asked,
    and sends few errors and echo requests; packet-ins are the metered
    blocked-attempt samples (smtp_border/rules.py caps them at the switch at
    the policy's sample rate, 10 a second by default, per direction)."""
    reply_timeout: float = 30.0
    echo_idle: float = 5.0
    echo_timeout: float = 3.0
    errors_per_second: float = 5.0  # those that answer none of our requests: a switch sends almost none
    errors_burst: float = 20.0
    echoes_per_second: float = 5.0
    echoes_burst: float = 20.0
    packet_ins_per_second: float = 100.0
    packet_ins_burst: float = 200.0
    log_interval: float = 60.0
    # A peer still over a limit by this many messages within one log
    # interval is not a switch having a bad moment: it is closed.
    flood_close_after: int = 2000
    min_reply_bytes: int = 16 * 1024 * 1024
    bytes_per_flow: int = 400

    def max_reply_bytes(self, flows):
        """The most a multipart reply may carry from a switch that should hold `flows` flows."""
        return max(self.min_reply_bytes, 2 * flows * self.bytes_per_flow)


class Bucket:
    """A token bucket: `rate` a second, up to `burst` at once."""

    def __init__(self, rate, burst, clock):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = burst, clock()

    def take(self):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Waiter:
    """Requests of one exchange, waiting for their replies (barrier or multipart)."""

    def __init__(self, event, requests, xids):
        self.waiting = {r.xid for r in requests}  # replies still to come
        self.replies = {r.xid: [] for r in requests}
        self.xids = set(xids)  # messages whose errors count against this exchange
        self.errors = []
        self.codes = []
        self.reply_bytes = 0
        self.done = event

    def answered(self, xid):
        self.waiting.discard(xid)
        if not self.waiting:
            self.done.set()

    def fail(self, reason):
        self.errors.append(reason)
        self.done.set()


class _Pending:
    """Requests sent, replies on their way (Channel.send)."""

    def __init__(self, channel, waiter, requests):
        self.channel, self.waiter, self.requests = channel, waiter, requests

    def wait(self, timeout=None):
        """The replies ({request xid: bodies}), as Channel.exchange returns them."""
        waiter, channel = self.waiter, self.channel
        try:
            timeout = channel.limits.reply_timeout if timeout is None else timeout
            if self.requests and not waiter.done.wait(timeout=timeout):
                raise SwitchFailed(f"no reply within {timeout:g} s")
        finally:
            channel._forget(self.requests)
        if waiter.errors:
            raise SwitchFailed(
                f"switch reported {len(waiter.errors)} error(s), first: {waiter.errors[0]}", tuple(waiter.codes)
            )
        return waiter.replies


class Channel:
    """The app's side of one connection (see the module's docstring)."""

    def __init__(self, dp, hub, limits=Limits(), clock=time.monotonic, reply_limit=None, name=None):
        self.dp = dp
        self.hub = hub
        self.limits = limits
        self.clock = clock
        self.name = name or (f"{dp.id:016x}" if dp.id is not None else "?")
        self.reply_limit = reply_limit or limits.min_reply_bytes
        self._waiters = {}  # xid -> _Waiter
        self.heard_at = clock()  # the last message from the switch
        self.echo_sent_at = None  # an unanswered liveness echo
        self.closed = None  # why the controller closed it
        self._buckets = {kind: Bucket(getattr(limits, f"{kind}_per_second"), getattr(limits, f"{kind}_burst"), clock)
                         for kind in ("errors", "echoes", "packet_ins")}
        self.dropped = collections.Counter()  # kind -> messages over the limit
        self._logged = {}  # kind -> (when last logged, dropped then)

    # -- requests ---------------------------------------------------------------

    def exchange(self, messages, requests, timeout=None):
        """Send `messages` then `requests` in one write, and wait for every
        request's reply (`Limits.reply_timeout` by default). Returns {request
        xid: reply bodies}. Raises SwitchFailed if the switch reports an
        error for any of them, does not answer in time, or is closed."""
        return self.send(messages, requests).wait(timeout)

    def send(self, messages, requests):
        """Send as exchange() does, without waiting: the caller works while
        the switch answers, then calls wait() on what this returns."""
        if self.closed:
            raise SwitchFailed(f"connection closed: {self.closed}")
        everything = list(messages) + list(requests)
        for msg in everything:
            self.dp.set_xid(msg)
            msg.serialize()
        waiter = _Waiter(self.hub.Event(), requests, (m.xid for m in everything))
        for request in requests:
            self._waiters[request.xid] = waiter
        # One write for the lot: a full install is 20,000 messages, and
        # one send-queue entry each would cost more than encoding them.
        if not self.dp.send(b"".join(msg.buf for msg in everything)):
            self._forget(requests)
            raise SwitchFailed("connection to the switch closed while sending")
        return _Pending(self, waiter, requests)

    def _forget(self, requests):
        for request in requests:
            self._waiters.pop(request.xid, None)

    # -- what the switch sends ------------------------------------------------------

    def heard(self):
        """Any message from the switch: it is alive."""
        self.heard_at = self.clock()
        self.echo_sent_at = None

    def answered(self, msg):
        """A barrier, echo, role or get-config reply."""
        self.heard()
        waiter = self._waiters.get(msg.xid)
        if waiter is not None:
            if msg.xid in waiter.replies:
                waiter.replies[msg.xid].append(msg)
            waiter.answered(msg.xid)

    def multipart(self, msg, more):
        """One part of a multipart reply; `more`: OFPMPF_REPLY_MORE is set.
        Gathered up to the reply limit; past it the connection is closed."""
        self.heard()
        waiter = self._waiters.get(msg.xid)
        if waiter is None:
            return
        waiter.reply_bytes += getattr(msg, "msg_len", None) or len(getattr(msg, "buf", None) or b"")
        if waiter.reply_bytes > self.reply_limit:
            self.dropped["oversized_replies"] += 1
            self.close(f"a multipart reply passed {self.reply_limit // (1024 * 1024)} MiB (more than its table can"
                       " hold)")
            return
        body = waiter.replies[msg.xid]
        # An aggregate reply's body is one record, the others a list.
        body.extend(msg.body) if isinstance(msg.body, list) else body.append(msg.body)
        if not more:
            waiter.answered(msg.xid)

    def error(self, msg, describe):
        """An OpenFlow error: it fails the exchange it answers. Over the
        rate limit it is dropped (counted) before it is even described."""
        self.heard()
        waiter = self._waiters.get(msg.xid)
        if waiter is None:
            waiter = next((w for w in set(self._waiters.values()) if msg.xid in w.xids), None)
        if waiter is None and not self.allow("errors"):
            return None
        description = describe(msg)
        if waiter is not None:
            waiter.errors.append(description)
            waiter.codes.append((msg.type, msg.code))
            if msg.xid in waiter.waiting:
                waiter.done.set()  # no reply will come
        return description

    def allow(self, kind):
        """Whether one more message of `kind` (errors, echoes, packet_ins) is
        within the limit; if not it is counted, and said once an interval."""
        if self._buckets[kind].take():
            return True
        self.note(kind, f"over the limit of {getattr(self.limits, f'{kind}_per_second'):g} a second; dropped")
        return False

    def note(self, kind, what):
        """Count one message of `kind` the app could not use (`what` says
        why), and say so once a log interval, never once a message."""
        self.dropped[kind] += 1
        now = self.clock()
        last, _ = self._logged.get(kind, (None, 0))
        if last is None or now - last >= self.limits.log_interval:
            LOG.warning("smtp-border: switch %s: %s %s (%d so far; said once a %g s)", self.name,
                        kind.replace("_", "-"), what, self.dropped[kind], self.limits.log_interval)
            self._logged[kind] = (now, self.dropped[kind] - 1)  # the count before this interval's first

    def flooding(self, kind):
        """After a message of `kind` was dropped: close a peer that keeps it up."""
        _, then = self._logged.get(kind, (None, 0))
        if self.dropped[kind] - then >= self.limits.flood_close_after:
            self.close(f"flooding: {self.dropped[kind] - then} {kind.replace('_', '-')} over the limit")

    # -- liveness and closing ------------------------------------------------------

    def liveness(self):
        """What liveness asks now: None (heard lately, or an echo is out and
        not yet late), "echo" (send one: silent for echo_idle), or "dead"
        (the echo went unanswered for echo_timeout)."""
        now = self.clock()
        if self.echo_sent_at is not None:
            return "dead" if now - self.echo_sent_at >= self.limits.echo_timeout else None
        return "echo" if now - self.heard_at >= self.limits.echo_idle else None

    def keep_alive(self):
        """Check liveness now; send the echo or close. Returns False once closed."""
        if self.closed:
            return False
        verdict = self.liveness()
        if verdict == "echo":
            self.echo_sent_at = self.clock()
            request = self.dp.ofproto_parser.OFPEchoRequest(self.dp, data=b"smtp-border")
            self.dp.set_xid(request)
            request.serialize()
            if not self.dp.send(request.buf):
                self.close("connection closed while sending")
        elif verdict == "dead":
            self.close(f"silent for {self.limits.echo_idle + self.limits.echo_timeout:g} s: no answer to an echo")
        return not self.closed

    def close(self, reason):
        """Close the connection (once), and fail every exchange waiting on it."""
        if self.closed:
            return
        self.closed = reason
        LOG.warning("smtp-border: switch %s: connection closed: %s", self.name, reason)
        self.fail_all(reason)
        self.dp.close()

    def fail_all(self, reason):
        for waiter in set(self._waiters.values()):
            waiter.fail(reason)
