"""The policy in force: the operator's policy.yaml plus exceptions added over REST.

Every change is first *proposed*, which validates it completely and computes
the new policy without touching anything, and then *committed*, which saves
the API exceptions (crash-safe) and makes the new policy current. A rejected
proposal leaves the policy in force exactly as it was.
"""
import dataclasses
from dataclasses import dataclass
from typing import Tuple

from .policy import SOURCE_API, MailException, Policy, PolicyError, load_policy, parse_exception, utc_now
from .state import StateFile, default_state_path


class NotFound(Exception):
    pass


class Conflict(Exception):
    def __init__(self, message, existing=None):
        super().__init__(message)
        self.existing = existing


@dataclass(frozen=True)
class Change:
    file_policy: Policy  # policy.yaml as it will be in force
    api_exceptions: Tuple[MailException, ...]
    added: Tuple[MailException, ...] = ()
    removed: Tuple[MailException, ...] = ()

    @property
    def policy(self):
        return _effective(self.file_policy, self.api_exceptions)


class PolicyStore:
    def __init__(self, policy_file, state_file=None):
        """Load policy.yaml and the saved API exceptions; PolicyError if either is bad."""
        self.policy_file = str(policy_file)
        self.state_file = str(state_file or default_state_path(policy_file))
        file_policy = load_policy(self.policy_file)
        self._state = StateFile(self.state_file)
        saved = self._state.load()
        api = tuple(
            parse_exception(item, file_policy.campus, source=self.state_file, path=f"exceptions[{i}]")
            for i, item in enumerate(saved)
        )
        if any(item["address"] != str(e.address) for item, e in zip(saved, api)):
            # Removals name addresses as we spell them: respell the file first.
            self._state.rewrite_on_next_record()
        _check_no_overlap(file_policy, api, blame=self.state_file)
        self.file_policy = file_policy
        self.api_exceptions = api
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

    def propose_add(self, data, now=None):
        """A new API exception from a request body (a mapping)."""
        exception = self._parse_new(data, "", now)
        existing = self._cache()[2].get(exception.address)
        if existing is not None:
            raise Conflict(f"an exception for {exception.address} already exists (id {existing.id})", existing)
        return Change(self.file_policy, self.api_exceptions + (exception,), added=(exception,))

    def propose_remove(self, exception_id):
        exception = self._removable(exception_id)
        remaining = tuple(e for e in self.api_exceptions if e.id != exception_id)
        return Change(self.file_policy, remaining, added=(), removed=(exception,))

    def propose_batch(self, additions, removals, now=None):
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
            exception = self._parse_new(data, f"add[{i}]", now)
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
            added=tuple(added.values()), removed=tuple(removed.values()),
        )

    def _parse_new(self, data, path, now):
        exception = parse_exception(data, self.file_policy.campus, source="request", path=path)
        if exception.expires is not None and not exception.is_active(now or utc_now()):
            where = f"{path}.expires" if path else "expires"
            raise PolicyError("request", where, f"{exception.expires.isoformat()} is in the past")
        return exception

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

    def propose_reload(self):
        """policy.yaml as it is on disk now; PolicyError if it is invalid."""
        file_policy = load_policy(self.policy_file)
        _check_no_overlap(file_policy, self.api_exceptions, blame=self.policy_file)
        old = {e.id: e for e in self.file_policy.exceptions}
        new = {e.id: e for e in file_policy.exceptions}
        added = tuple(e for i, e in new.items() if old.get(i) != e)
        removed = tuple(e for i, e in old.items() if new.get(i) != e)
        return Change(file_policy, self.api_exceptions, added=added, removed=removed)

    def commit(self, change):
        if change.api_exceptions is not self.api_exceptions:
            self._state.record(
                removed=[str(e.address) for e in change.removed if e.source == SOURCE_API],
                added=[_saved_form(e) for e in change.added if e.source == SOURCE_API],
                everything=lambda: [_saved_form(e) for e in change.api_exceptions],
            )
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


def _effective(file_policy, api_exceptions):
    return dataclasses.replace(file_policy, exceptions=file_policy.exceptions + tuple(api_exceptions))


def _check_no_overlap(file_policy, api_exceptions, blame):
    """The same address may not be both in the file and an API exception: which
    one is in force would depend on the order they were loaded."""
    in_file = {e.address: i for i, e in enumerate(file_policy.exceptions)}
    for i, exception in enumerate(api_exceptions):
        if exception.address in in_file:
            where = f"exceptions[{in_file[exception.address]}]" if blame == file_policy.source else f"exceptions[{i}]"
            raise PolicyError(
                blame, f"{where}.address",
                f"{exception.address} is both in {file_policy.source} and an API exception (id {exception.id});"
                " keep only one",
            )


def _saved_form(exception):
    data = exception.to_dict()
    for key in ("id", "source"):
        del data[key]
    return {k: v for k, v in data.items() if v is not None}

