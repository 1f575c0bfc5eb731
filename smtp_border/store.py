"""The policy in force: the operator's policy.yaml plus exceptions added over REST.

Every change is first *proposed*, which validates it completely and computes
the new policy without touching anything, and then *committed*, which saves
the API exceptions (crash-safe) and makes the new policy current. A rejected
proposal leaves the policy in force exactly as it was.
"""
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Optional, Tuple

import netaddr

from .policy import (
    MESSAGE_SIZE, PART2_RULE, SOURCE_API, MailException, Policy, PolicyError, exception_id, format_size, load_policy,
    parse_exception, utc_now,
)
from .state import StateFile, default_state_path


class NotFound(Exception):
    pass


class Conflict(Exception):
    def __init__(self, message, existing=None):
        super().__init__(message)
        self.existing = existing


@dataclass(frozen=True)
class Quarantined:
    """An API exception kept in the state file but not enforced, because the
    policy file in force contradicts it (or it does not parse at all).

    Refusing to start over it would leave the border unenforced until someone
    edited the state file by hand; enforcing it would override the operator's
    file. It is reported instead (start-up log, GET /exceptions, a metric),
    judged again at every reload (it is enforced again once the file allows
    it), and can be removed over the API."""

    address: str  # as saved: the key of its journal lines
    item: dict  # the saved mapping
    reason: str
    exception: Optional[MailException] = None  # None when it does not parse

    @property
    def id(self):
        return self.exception.id if self.exception else exception_id(self.address)

    def to_dict(self):
        document = dict(self.exception.to_dict()) if self.exception else {"id": self.id, **self.item, "source": SOURCE_API}
        document.update(state="quarantined", quarantine_reason=self.reason)
        return document


@dataclass(frozen=True)
class Change:
    file_policy: Policy  # policy.yaml as it will be in force
    api_exceptions: Tuple[MailException, ...]
    added: Tuple[MailException, ...] = ()
    removed: Tuple[MailException, ...] = ()
    quarantined: Tuple[Quarantined, ...] = ()  # every quarantined exception after the change
    dropped: Tuple[Quarantined, ...] = ()  # quarantined ones removed over the API
    # What the state file records: addresses removed, API exceptions added.
    save_removed: Tuple[str, ...] = ()
    save_added: Tuple[MailException, ...] = ()
    subject: Optional[MailException] = None  # the one exception a POST names, new or already in force
    seen: Tuple = ()  # etcd events this change applies (another replica's): recorded as seen on commit

    @property
    def policy(self):
        return _effective(self.file_policy, self.api_exceptions)


class PolicyStore:
    def __init__(self, policy_file, state_file=None, state=None):
        """Load policy.yaml and the saved API exceptions: from the journal
        file (state_file, by default beside policy.yaml), or from `state`, an
        object with the same interface (smtp_border/etcdstate.EtcdState).

        PolicyError if policy.yaml is invalid or the state file is unreadable;
        an API exception that the file contradicts is quarantined, not fatal.
        StateUnavailable if `state` cannot be read (etcd down)."""
        self.policy_file = str(policy_file)
        file_policy = load_policy(self.policy_file)
        if state is None:
            self.state_file = str(state_file or default_state_path(policy_file))
            state = StateFile(self.state_file)
        else:
            self.state_file = state.path
        self._state = state
        saved = self._state.load()
        candidates = []
        for i, item in enumerate(saved):
            try:
                exception = parse_exception(item, None, source=self.state_file, path=f"exceptions[{i}]", recorded=True)
            except PolicyError as err:
                candidates.append(Quarantined(str(item.get("address")), item, f"invalid: {err.path}: {err.problem}"))
                continue
            if item["address"] != str(exception.address):
                # Removals name addresses as we spell them: respell the file first.
                self._state.rewrite_on_next_record()
            candidates.append(exception)
        self.file_policy = file_policy
        self.api_exceptions, self.quarantined = _partition(file_policy, candidates)
        # id -> position in the state file, to keep that order across reloads.
        self._saved_at = {c.id: i for i, c in enumerate(candidates)}
        self._next_position = itertools.count(len(candidates))
        self._cached_for = (None, None)  # (file policy, API exceptions) that _cached was built from

    @property
    def policy(self):
        return self._cache()[0]

    def _cache(self):
        """The policy in force and its exceptions by id and by address, built
        once per change: with 10,000 exceptions a scan per request would cost
        more than the change itself."""
        cached_for = self._cached_for
        # Identity, not equality: comparing two 10,000-exception policies is the cost we avoid.
        if cached_for[0] is not self.file_policy or cached_for[1] is not self.api_exceptions:
            policy = _effective(self.file_policy, self.api_exceptions)
            self._cached = (policy, {e.id: e for e in policy.exceptions}, {e.address: e for e in policy.exceptions})
            self._cached_for = (self.file_policy, self.api_exceptions)
        return self._cached

    def exception(self, exception_id):
        found = self._cache()[1].get(exception_id)
        if found is None:
            raise NotFound(f"no exception with id {exception_id!r}")
        return found

    def propose_add(self, data, now=None, by=None):
        """A new API exception from a request body (a mapping).

        The same exception again (every field equal) is no change: a client
        that retries after a failed answer gets the exception in force."""
        exception = self._parse_new(data, "", now, by)
        self._refuse_over_quarantined(exception)
        existing = self._cache()[2].get(exception.address)
        if existing == exception:
            return Change(self.file_policy, self.api_exceptions, quarantined=self.quarantined, subject=existing)
        if existing is not None:
            raise Conflict(f"an exception for {exception.address} already exists (id {existing.id})", existing)
        return Change(self.file_policy, self.api_exceptions + (exception,), added=(exception,),
                      quarantined=self.quarantined, save_added=(exception,), subject=exception)

    def propose_remove(self, exception_id):
        for q in self.quarantined:
            if q.id == exception_id:
                return Change(self.file_policy, self.api_exceptions, dropped=(q,),
                              quarantined=tuple(x for x in self.quarantined if x is not q), save_removed=(q.address,))
        exception = self._removable(exception_id)
        remaining = tuple(e for e in self.api_exceptions if e.id != exception_id)
        return Change(self.file_policy, remaining, added=(), removed=(exception,), quarantined=self.quarantined,
                      save_removed=(str(exception.address),))

    def propose_batch(self, additions, removals, now=None, by=None):
        """Remove the API exceptions with ids `removals`, then add `additions`
        (request mappings), as one change: all of it or, on any error, none.
        An address may be removed and added again (to change it)."""
        removed = {}
        for i, exception_id in enumerate(removals):
            if not isinstance(exception_id, str):
                raise PolicyError("request", f"remove[{i}]", f"expected an exception id (a string), got {exception_id!r}")
            if exception_id in removed:
                raise PolicyError("request", f"remove[{i}]", f"{exception_id} is removed twice")
            removed[exception_id] = self._removable(exception_id, f"remove[{i}]: ")
        freed = {e.address for e in removed.values()}
        added = {}
        for i, data in enumerate(additions):
            exception = self._parse_new(data, f"add[{i}]", now, by)
            self._refuse_over_quarantined(exception, f"add[{i}]: ")
            existing = self._cache()[2].get(exception.address)
            if existing is not None and exception.address not in freed:
                raise Conflict(f"add[{i}]: an exception for {exception.address} already exists (id {existing.id})", existing)
            if exception.address in added:
                raise PolicyError("request", f"add[{i}].address", f"{exception.address} is added twice")
            added[exception.address] = exception
        remaining = self.api_exceptions
        if removed:
            remaining = tuple(e for e in remaining if e.id not in removed)
        return Change(
            self.file_policy, remaining + tuple(added.values()),
            added=tuple(added.values()), removed=tuple(removed.values()), quarantined=self.quarantined,
            save_removed=tuple(str(e.address) for e in removed.values()), save_added=tuple(added.values()),
        )

    def _refuse_over_quarantined(self, exception, context=""):
        """An address whose saved entry is quarantined takes no new grant
        until that entry is removed: the journal knows one entry an address,
        so the two would share it, and removing the quarantined one would
        take the grant with it (issue 24: a grant lost at the next restart)."""
        for q in self.quarantined:
            if _same_address(q, exception.address):
                raise Conflict(
                    f"{context}the saved exception for {exception.address} is quarantined (id {q.id}: {q.reason});"
                    f" remove it first (smtp-border exceptions rm {q.id}), then add the new one", q)

    def _parse_new(self, data, path, now, by=None):
        exception = parse_exception(data, self.file_policy.campus, source="request", path=path)
        if by is not None:  # who grants it, and when: saved with it
            exception = dataclasses.replace(exception, created_by=by, created_at=(now or utc_now()).replace(microsecond=0))
        address = exception.address
        widest = self.file_policy.api.widest(address.version)
        if address.prefixlen < widest:
            key = f"api.widest_exception.ipv{address.version}"
            raise PolicyError(
                "request", f"{path}.address" if path else "address",
                f"{address} is wider than /{widest}, the widest exception the API may grant ({key} in"
                f" {self.policy_file}); grant it in the file, or raise the limit there",
            )
        if exception.expires is not None and not exception.is_active(now or utc_now()):
            where = f"{path}.expires" if path else "expires"
            raise PolicyError("request", where, f"{exception.expires.isoformat()} is in the past")
        if exception.direction.allows_outbound:
            self._check_part2(exception, path)
        return exception

    def _check_part2(self, exception, path):
        """A Part 2 grant over the API must state grounds the policy accepts
        (part2_grounds; by default the policy's own: message size), and for
        message size, a need the relay does not meet."""
        accepted = self.file_policy.part2.grounds
        if exception.grounds not in accepted:
            allowed = (f"grounds: {' or '.join(accepted)}" if accepted
                       else "none over the API (part2_grounds is empty): grant it in the file")
            raise PolicyError(
                "request", f"{path}.grounds" if path else "grounds",
                f"a Part 2 (outbound) exception needs grounds; {self.policy_file} accepts {allowed}. The policy:"
                f" \"{PART2_RULE}\". For a message-size grant give grounds: {MESSAGE_SIZE} and"
                " needs_message_size (e.g. 200MB)")
        limit = self.file_policy.relay_limit
        if exception.grounds == MESSAGE_SIZE and limit is not None and exception.needs_message_size <= limit:
            raise PolicyError(
                "request", f"{path}.needs_message_size" if path else "needs_message_size",
                f"{format_size(exception.needs_message_size)} is within the relay's limit ({format_size(limit)},"
                f" gateways[].max_message_size in {self.policy_file}): send that mail through the relay")

    def _removable(self, exception_id, context=""):
        try:
            exception = self.exception(exception_id)
        except NotFound as err:
            raise NotFound(f"{context}{err}") from None
        if exception.source != SOURCE_API:
            raise Conflict(
                f"{context}exception {exception_id} ({exception.address}) comes from {self.policy_file};"
                " remove it there and reload",
                exception,
            )
        return exception

    def propose_remote(self, events):
        """What another replica saved (etcd watch events: (kind, address,
        mapping, revision), kind "put" or "delete"), as a Change that is not saved
        again. An event this replica holds already (its own change coming
        back through the watch) changes nothing."""
        candidates = {}
        for candidate in list(self.api_exceptions) + [q.exception or q for q in self.quarantined]:
            candidates[candidate.address if isinstance(candidate, Quarantined) else str(candidate.address)] = candidate
        for kind, address, item, _ in events:
            if kind == "delete":
                candidates.pop(address, None)
                continue
            try:
                exception = parse_exception(item, None, source=self.state_file, path=address, recorded=True)
            except PolicyError as err:
                candidates[address] = Quarantined(address, item, f"invalid: {err.path}: {err.problem}")
                continue
            if candidates.get(address) != exception:
                candidates.pop(address, None)  # a replaced exception moves to the end, as in the journal
                candidates[address] = exception
                self._saved_at[exception.id] = next(self._next_position)
        api, quarantined = _partition(self.file_policy, list(candidates.values()))
        old = {e.id: e for e in self.api_exceptions}
        new = {e.id: e for e in api}
        added = tuple(e for i, e in new.items() if old.get(i) != e)
        removed = tuple(e for i, e in old.items() if new.get(i) != e)
        dropped = tuple(q for q in self.quarantined if q.address not in {x.address for x in quarantined})
        return Change(self.file_policy, api, added=added, removed=removed, quarantined=quarantined, dropped=dropped,
                      seen=tuple(events))

    def propose_reload(self):
        """policy.yaml as it is on disk now; PolicyError if it is invalid.

        The API exceptions are judged again against the new file: those it
        contradicts are quarantined (Change.quarantined), those it allows
        again are enforced again. So a reload that is accepted is exactly
        what a restart with the same files would enforce."""
        file_policy = load_policy(self.policy_file)
        candidates = list(self.api_exceptions) + [q.exception or q for q in self.quarantined]
        # In the order they were saved, as a restart would read them.
        candidates.sort(key=lambda c: self._saved_at.get(c.id, 0))
        api, quarantined = _partition(file_policy, candidates)
        old = {e.id: e for e in self.policy.exceptions}
        new = {e.id: e for e in _effective(file_policy, api).exceptions}
        # Identity first: a reload of an unchanged entry gives the same object back.
        added = tuple(e for i, e in new.items() if old.get(i) is not e and old.get(i) != e)
        removed = tuple(e for i, e in old.items() if new.get(i) is not e and new.get(i) != e)
        return Change(file_policy, api, added=added, removed=removed, quarantined=quarantined)

    def commit(self, change):
        """Save the change (StateUnavailable if it cannot be: nothing changes) and make it current."""
        if change.save_added or change.save_removed:
            self._state.record(
                removed=list(change.save_removed),
                added=[_saved_form(e) for e in change.save_added],
                everything=lambda: [_saved_form(e) for e in change.api_exceptions] + [q.item for q in change.quarantined],
                before=lambda: [_saved_form(e) for e in self.api_exceptions] + [q.item for q in self.quarantined],
            )
        if change.seen:
            self._state.seen(change.seen)
        cached_for = self._cached_for
        if change.file_policy is self.file_policy is cached_for[0] and cached_for[1] is self.api_exceptions:
            # Only API exceptions changed: update the indexes in place rather
            # than rebuild them (hashing 10,000 networks costs milliseconds).
            _, by_id, by_address = self._cached
            for e in change.removed:
                del by_id[e.id], by_address[e.address]
            for e in change.added:
                by_id[e.id], by_address[e.address] = e, e
            self._cached = (_effective(change.file_policy, change.api_exceptions), by_id, by_address)
            self._cached_for = (change.file_policy, change.api_exceptions)
        self.file_policy = change.file_policy
        self.api_exceptions = change.api_exceptions
        self.quarantined = change.quarantined
        for e in change.save_added:
            self._saved_at[e.id] = next(self._next_position)  # a re-added address moves to the end, as in the journal


def _same_address(quarantined, address):
    """Whether a quarantined entry is for `address` (its saved spelling may not parse)."""
    if quarantined.exception is not None:
        return quarantined.exception.address == address
    try:
        return netaddr.IPNetwork(quarantined.address) == address
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return False


def _partition(file_policy, candidates):
    """Split saved API exceptions into those the file allows and those it
    contradicts (Quarantined, with the reason). A Quarantined candidate that
    never parsed stays quarantined."""
    in_file = {e.address: i for i, e in enumerate(file_policy.exceptions)}
    good, bad = [], []
    for candidate in candidates:
        if isinstance(candidate, Quarantined):
            bad.append(candidate)
            continue
        address = candidate.address
        reason = None
        if not file_policy.is_campus(address):
            reason = f"{address} is not inside the campus prefixes of {file_policy.source}"
        elif address in in_file:
            reason = (f"{address} is also in {file_policy.source} (exceptions[{in_file[address]}]),"
                      " whose entry is in force")
        if reason is None:
            good.append(file_policy.judged(candidate))
        else:
            bad.append(Quarantined(str(address), _saved_form(candidate), reason, candidate))
    return tuple(good), tuple(bad)


def _effective(file_policy, api_exceptions):
    return dataclasses.replace(file_policy, exceptions=file_policy.exceptions + tuple(api_exceptions))


def _saved_form(exception):
    data = exception.to_dict()
    for key in ("id", "source", "lapsed"):
        data.pop(key, None)
    return {k: v for k, v in data.items() if v is not None}

