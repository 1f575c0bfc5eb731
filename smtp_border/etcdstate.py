"""API exceptions in etcd, shared by every controller replica (issue 13).

Selected by SMTP_POLICY_ETCD=http://127.0.0.1:2379[,http://...]; without it
the journal file beside policy.yaml (smtp_border/state.py) stays the
default. The same interface as state.StateFile (load, record), so the
PolicyStore neither knows nor cares which one it has.

One key per exception, `/smtp-border/exceptions/<address>`, holding the
exception as the journal spells it (JSON). A change (an add, a removal, a
batch) is one etcd transaction that compares what this replica last saw of
every key it touches: a new address must not exist yet, a removed or
replaced one must still be at the revision we read. If another replica got
there first the transaction fails and the change is refused as a Conflict
(409): never lost, never applied over someone else's. A change that cannot
reach etcd at all is StateUnavailable (503): nothing changed. One that
reached a member without quorum and was not confirmed in time is
StateInDoubt (503 too, worded so): etcd keeps such a proposal and may
commit it when the quorum returns; the watch then brings it in, on every
replica alike.

Changes made by other replicas arrive through `watch` (etcd's watch API,
from the revision this replica has seen), and go through the one method a
change goes through (Border.sync).

etcd3gw (PyPI, >= 2.3) speaks etcd's JSON gateway over plain HTTP: under
ryu-manager, which monkey-patches sockets, it cooperates with eventlet.
Debian's python3-etcd3gw 2.0 asks /v3alpha/, which etcd 3.4 answers 404; the
gRPC client breaks on current protobuf.
"""
import base64
import json
import threading
import time
import urllib.parse

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw import exceptions as etcd_errors

from .state import StateUnavailable

ETCD_ENV = "SMTP_POLICY_ETCD"
PREFIX = "/smtp-border/exceptions/"
# How long one request to one member may take. A follower whose leader was
# just killed holds a write until etcd's own request timeout (6 s measured
# here) although a new leader is elected within a second: a short timeout
# and another try is faster, and safe (see record).
TIMEOUT = 2.0
# How long a write keeps trying through elections and lost members before
# it is answered as in doubt.
WRITE_DEADLINE = 6.0


class ConcurrentChange(Exception):
    """Another replica changed one of these exceptions first; nothing changed."""


class StateInDoubt(StateUnavailable):
    """A write etcd did not confirm in time. etcd may still commit it (a
    member without quorum keeps the proposal, and applies it once quorum
    returns): nothing changed *here*, and the watch will bring the change
    in if it lands. So the answer must not say it was refused."""


def endpoints_from(text):
    """['http://127.0.0.1:2379', ...] from SMTP_POLICY_ETCD; ValueError naming a bad one."""
    endpoints = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        url = urllib.parse.urlsplit(item if "//" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{ETCD_ENV}: {item!r} is not an etcd endpoint (http://host:port)")
        endpoints.append((url.scheme, url.hostname, url.port or 2379))
    if not endpoints:
        raise ValueError(f"{ETCD_ENV} names no endpoint")
    return endpoints


def _b64(text):
    return base64.b64encode(text.encode()).decode()


class EtcdState:
    """The API exceptions of every replica, in etcd."""

    def __init__(self, endpoints, prefix=PREFIX, timeout=TIMEOUT):
        self.endpoints = endpoints_from(endpoints) if isinstance(endpoints, str) else list(endpoints)
        self.prefix = prefix
        self.path = f"etcd {','.join(f'{s}://{h}:{p}' for s, h, p in self.endpoints)} {prefix}"
        self._clients = [Etcd3Client(host=h, port=p, protocol=s, timeout=timeout, api_path="/v3/")
                         for s, h, p in self.endpoints]
        self._preferred = 0  # the endpoint that answered last
        self.revision = 0  # the etcd revision this replica's view reflects
        self._mod = {}  # address -> mod revision of its key, as last seen
        self.watching = 0  # the endpoint the watch streams from

    # -- talking to etcd, failing over between endpoints ------------------------

    def _call(self, what, request, write=False):
        """`request(client)` on the first endpoint that answers. A write that
        reached a member and failed there (a timeout; etcd's 503 while a
        leader is elected) may yet commit: StateInDoubt, which record()
        resolves. Only when no member could be reached at all is a write
        surely not made: StateUnavailable."""
        errors, reached = [], False
        for offset in range(len(self._clients)):
            index = (self._preferred + offset) % len(self._clients)
            try:
                result = request(self._clients[index])
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                    etcd_errors.InternalServerError, requests.exceptions.RequestException) as err:
                # (etcd3gw passes requests' own errors through when it makes a watch.)
                scheme, host, port = self.endpoints[index]
                errors.append(f"{host}:{port}: {_reason(err)}")
                reached = reached or not _unreachable(err)
                continue
            self._preferred = index
            return result
        if write and reached:
            raise StateInDoubt(
                f"cannot {what}: etcd did not confirm it ({'; '.join(errors)}); it is not in force here, and may"
                " still take effect if etcd commits it once it has a quorum again: look again"
                " (GET /smtp/v1/exceptions) before retrying")
        raise StateUnavailable(f"cannot {what}: no etcd member answered ({'; '.join(errors)})")

    # -- the StateFile interface --------------------------------------------------

    def load(self):
        """The exception mappings in etcd, oldest first (by creation)."""
        # The revision first, then the keys: the watch then starts at or
        # before what was read (replaying a change already read is a no-op),
        # never after a change it would miss.
        header = self._call("read etcd's revision", lambda c: c.status())["header"]
        items = self._call("read the exceptions from etcd", lambda c: c.get_prefix(self.prefix))
        self.revision = int(header["revision"])
        found = []
        self._mod = {}
        for value, meta in items:
            address = meta["key"].decode()[len(self.prefix):]
            self._mod[address] = int(meta["mod_revision"])
            found.append((int(meta["create_revision"]), json.loads(value)))
        return [item for _, item in sorted(found, key=lambda pair: pair[0])]

    def record(self, removed, added, everything=None, before=None):
        """Save one change as one transaction; ConcurrentChange if another
        replica changed a key first, StateUnavailable without a quorum."""
        compare, success = [], []
        touched = list(removed) + [item["address"] for item in added]
        for address in dict.fromkeys(touched):
            key = _b64(self.prefix + address)
            known = self._mod.get(address)
            if known is None:
                compare.append({"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0})
            else:
                compare.append({"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": known})
        replaced = {item["address"] for item in added}
        for address in removed:
            if address not in replaced:  # one request per key: the put replaces it
                success.append({"request_delete_range": {"key": _b64(self.prefix + address)}})
        for item in added:
            success.append({"request_put": {"key": _b64(self.prefix + item["address"]),
                                            "value": _b64(json.dumps(item, sort_keys=True))}})
        txn = {"compare": compare, "success": success, "failure": []}
        response = self._write(txn, removed, added, touched)
        revision = int(response["header"]["revision"])
        for address in removed:
            self._mod.pop(address, None)
        for item in added:
            self._mod[item["address"]] = revision
        self.revision = max(self.revision, revision)

    def _write(self, txn, removed, added, touched):
        """Send the transaction until etcd confirms or refuses it. An attempt
        that times out (an election, a lost member) may still commit, so
        before another attempt the keys are read: if they hold what this
        change writes, it landed. Sending it again is safe either way: its
        comparisons make a second copy fail once the first has committed."""
        deadline = time.monotonic() + WRITE_DEADLINE
        doubt = None
        while True:
            try:
                response = self._call("save the change in etcd", lambda c: c.transaction(txn), write=True)
            except StateInDoubt as err:
                doubt = err
            else:
                if response.get("succeeded"):
                    return response
                if doubt is None:
                    raise ConcurrentChange(
                        "another controller changed " + ", ".join(dict.fromkeys(touched)) + " at the same time;"
                        " nothing changed here; look again and retry")
            landed = self._landed(removed, added)
            if landed is not None:
                return landed
            if time.monotonic() >= deadline:
                raise doubt
            time.sleep(0.2)

    def _landed(self, removed, added):
        """A response-like {"header": {"revision"}} if etcd holds exactly what
        this change writes, None if it does not (or cannot say now)."""
        try:
            revision = 0
            for item in added:
                found = self._call("read back", lambda c: c.get(self.prefix + item["address"], metadata=True))
                if not found or json.loads(found[0][0]) != item:
                    return None
                revision = max(revision, int(found[0][1]["mod_revision"]))
            for address in set(removed) - {item["address"] for item in added}:
                if self._call("read back", lambda c: c.get(self.prefix + address)):
                    return None
            if not added:
                revision = int(self._call("read etcd's revision", lambda c: c.status())["header"]["revision"])
            return {"succeeded": True, "header": {"revision": revision}}
        except StateUnavailable:
            return None

    def rewrite_on_next_record(self):
        """(The journal respells addresses on its next write; etcd keys are
        written as spelled, so there is nothing to do.)"""

    # -- what other replicas do -----------------------------------------------------

    def watch(self):
        """(events iterator, cancel) from the revision after the one seen, on
        the endpoint that answers. Each event: (kind, address, mapping,
        revision), kind "put" or "delete". What is seen is recorded when it is
        applied (seen()), under the caller's lock, so a change made here never
        compares against a revision this replica has not applied yet."""
        start = self.revision + 1
        events, cancel = self._call("watch etcd", lambda c: c.watch_prefix(self.prefix, start_revision=start))
        self.watching = self._preferred

        def decoded():
            for event in events:
                kv = event["kv"]
                address = kv["key"].decode()[len(self.prefix):]
                revision = int(kv["mod_revision"])
                if event.get("type") == "DELETE":
                    yield "delete", address, None, revision
                else:
                    yield "put", address, json.loads(kv["value"]), revision

        return decoded(), cancel

    def watch_alive(self, watching=None):
        """False once the member the watch streams from stops answering: its
        stream then ends without a word, and the watch must be made again."""
        try:
            self._clients[self.watching if watching is None else watching].status()
            return True
        except (etcd_errors.Etcd3Exception, requests.exceptions.RequestException, OSError):
            return False

    def seen(self, events):
        """Events applied: the revisions a later change compares against."""
        for kind, address, _, revision in events:
            if kind == "delete":
                self._mod.pop(address, None)
            else:
                self._mod[address] = revision
            self.revision = max(self.revision, revision)


def _unreachable(err):
    """True for an error that means the request never reached etcd (the
    connection was refused or could not be made): etcd3gw says so in the
    message of the ConnectionFailedError it makes from requests' error."""
    text = " ".join(str(a) for a in err.args)
    return isinstance(err, (etcd_errors.ConnectionFailedError, requests.exceptions.ConnectionError)) and (
        "Connection refused" in text or "Failed to establish" in text or "Max retries" in text)


def _reason(err):
    text = str(err) or type(err).__name__
    return text.splitlines()[0][:200]


# -- which replica is master of which switch ---------------------------------------

MASTERS = "/smtp-border/masters/"
# Seconds a master's lease lives without a refresh; refreshed every third of
# it, trusted for two thirds of it by the replica's own clock. A master that
# dies is replaced within about this long (docs/ha.md). 3 s let a master
# busy reconnecting 50 switches miss its own refresh window; 5 s does not.
LEASE_TTL = 5


class Mastership:
    """One lease-bound key per switch names its master replica.

    A replica that a switch connects to tries to create the switch's key
    (a transaction on create revision 0), bound to this replica's lease. The
    winner is master; the key's create revision is the OpenFlow generation
    id, so a later master always has a higher one and the switch refuses the
    older (OFPRRFC_STALE). A replica that cannot refresh its lease has lost
    every key it held: it must stop writing at once (lost() says so)."""

    def __init__(self, state, replica, ttl=LEASE_TTL, prefix=MASTERS):
        self.state = state
        self.replica = replica
        self.ttl = ttl
        self.prefix = prefix
        self._lease = None
        self._granting = threading.Lock()  # green under ryu-manager (eventlet patches threading)
        self._lease_ok = False
        self._refreshed = 0.0  # time.monotonic() of the last grant or refresh
        self.watching = 0  # the endpoint the master watch streams from

    def _key(self, dpid):
        return f"{self.prefix}{dpid:016x}"

    @property
    def lease_ok(self):
        """True while our keys can be trusted: the lease was granted or
        refreshed less than two thirds of its life ago. By our own clock, so
        a replica that was frozen (SIGSTOP, a VM paused) stops writing the
        moment it runs again, before it has asked etcd anything."""
        return self._lease_ok and time.monotonic() - self._refreshed < self.ttl * 2 / 3

    @property
    def holds_lease(self):
        """A lease granted and not known lost (it may be stale by the clock
        while a refresh is late: then wait for it rather than take another)."""
        return self._lease is not None

    def _ensure_lease(self):
        # One lease per replica: fifty switches claimed at once must not each
        # grant one (only the last would be refreshed; the others' keys lapse).
        with self._granting:
            if self._lease is None:
                asked = time.monotonic()
                self._lease = self.state._call("take an etcd lease", lambda c: c.lease(self.ttl))
                self._lease_ok, self._refreshed = True, asked
            return self._lease

    def refresh(self):
        """Keep the lease alive; False once it is lost (expired, or etcd out
        of reach): then no key of ours may be trusted, and the next claim
        takes a new lease."""
        if self._lease is None:
            return False
        asked = time.monotonic()
        try:
            ttl = self.state._call("refresh the lease", lambda c: self._lease_on(c).refresh())
        except StateUnavailable:
            ttl = -1
        if ttl <= 0:
            self._lease, self._lease_ok = None, False
            return False
        self._refreshed = asked
        return True

    def _lease_on(self, client):
        from etcd3gw.lease import Lease
        return Lease(self._lease.id, client)

    def claim(self, dpid):
        """(master replica, generation id): this replica if the key was free
        (or is ours already), else whoever holds it. StateUnavailable if etcd
        cannot say."""
        lease = self._ensure_lease()
        key = _b64(self._key(dpid))
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": _b64(self.replica), "lease": lease.id}}],
            "failure": [{"request_range": {"key": key}}],
        }
        response = self.state._call("claim mastership", lambda c: c.transaction(txn))
        if response.get("succeeded"):
            return self.replica, int(response["header"]["revision"])
        found = response["responses"][0]["response_range"].get("kvs") or []
        if not found:  # gone between the compare and the read: try again
            return self.claim(dpid)
        kv = found[0]
        return base64.b64decode(kv["value"]).decode(), int(kv["create_revision"])

    def watch_alive(self):
        return self.state.watch_alive(self.watching)

    def release(self, dpid, generation):
        """Give the switch up (it disconnected from this replica): the key of
        that mastership only, by its create revision, so that a release that
        runs late never deletes the claim of the switch's next connection."""
        key = _b64(self._key(dpid))
        txn = {"compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": generation}],
               "success": [{"request_delete_range": {"key": key}}], "failure": []}
        try:
            self.state._call("release mastership", lambda c: c.transaction(txn))
        except StateUnavailable:
            pass  # the lease will lapse

    def watch(self):
        """(events, cancel): (dpid, master or None) as master keys change."""
        events, cancel = self.state._call("watch mastership", lambda c: c.watch_prefix(self.prefix))
        self.watching = self.state._preferred

        def decoded():
            for event in events:
                kv = event["kv"]
                dpid = int(kv["key"].decode()[len(self.prefix):], 16)
                yield dpid, None if event.get("type") == "DELETE" else kv["value"].decode()

        return decoded(), cancel
