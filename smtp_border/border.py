"""The policy in force and the flows every switch should hold: the core, no Ryu.

Border is the one object a change goes through. REST calls one method
(add, remove, batch, reload), the expiry timer calls expire; each validates
the change completely, saves it (the state file), updates the exception
index and the desired flows of every switch it tracks, and returns an
Outcome: the change and, per switch, the RuleDiff that takes a switch
holding the old desired flows to the new ones. It sends nothing: the Ryu
layer (ryu_apps/smtp_policy.py) delivers the diffs, or, for a switch whose
flows it no longer knows, reconciles it against `flows(dpid)`, and reports
back. So there is one place that decides what every switch should hold, and
changes flow one way: request -> Border -> diffs -> switches.

An invalid change raises (PolicyError, Conflict, NotFound) and a change
that cannot be saved raises StateUnavailable; in every case nothing changed.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Dict

from .compiler import ExceptionIndex, compile_switch
from .diff import RuleDiff, diff_rules
from .policy import cyclic_gc_paused, utc_now
from .store import Change, PolicyStore

NO_CHANGE = RuleDiff((), ())


@dataclass(frozen=True)
class Outcome:
    change: Change
    # dpid -> what takes a switch holding the old desired flows to the new
    # ones, for every tracked switch (empty where nothing changes for it).
    diffs: Dict[int, RuleDiff] = field(default_factory=dict)

    @property
    def subject(self):
        return self.change.subject


class Border:
    def __init__(self, policy_file, state_file=None, now=None):
        """PolicyError if policy.yaml (or the state file) cannot be read;
        API exceptions the file contradicts are quarantined, not fatal."""
        with cyclic_gc_paused():  # hundreds of thousands of objects, no garbage
            self.store = PolicyStore(policy_file, state_file)
            self._desired = {}  # dpid -> set of FlowRule the switch should hold
            self._rebuild(now or utc_now())

    @property
    def policy(self):
        return self.store.policy

    @property
    def active_ids(self):
        """Ids of the exceptions enforced now (not expired)."""
        return self._index.members

    def _rebuild(self, now):
        # The index and every compiled switch reflect the same moment, so that
        # expiry later removes exactly what they hold.
        self._as_of = now
        self._index = ExceptionIndex(self.policy, now)

    # -- the flows of each switch ----------------------------------------------

    def flows(self, dpid):
        """The rules switch `dpid` should hold now. Compiled once, then kept
        up to date by every change; the caller must not modify the set."""
        rules = self._desired.get(dpid)
        if rules is None:
            rules = self._desired[dpid] = set(compile_switch(self.policy, dpid, self._as_of))
        return rules

    def forget(self, dpid):
        """Stop tracking a switch (it disconnected); flows() compiles it anew."""
        self._desired.pop(dpid, None)

    def enforcing(self, dpid):
        return self.policy.switch_spec(dpid) is not None

    def listed(self):
        """The switches that must enforce: those listed in the policy, or None
        when it lists none (then every switch enforces by addresses)."""
        switches = self.policy.switches
        return None if switches is None else [s.dpid for s in switches]

    # -- changes -----------------------------------------------------------------

    def add(self, data, now=None):
        return self._apply(self.store.propose_add(data, now))

    def remove(self, exception_id):
        return self._apply(self.store.propose_remove(exception_id))

    def batch(self, additions, removals, now=None):
        return self._apply(self.store.propose_batch(additions, removals, now))

    def reload(self, now=None):
        with cyclic_gc_paused():
            return self._apply(self.store.propose_reload(), now)

    def expire(self, now):
        """Withdraw the exceptions whose time has come; None if none has."""
        # One pass, testing only exceptions with an expiry time: this runs
        # every few seconds over policies of 10,000 exceptions.
        active = self._index.members
        expired = tuple(
            e for e in self.policy.exceptions if e.expires is not None and not e.is_active(now) and e.id in active
        )
        self._as_of = now
        if not expired:
            return None
        return Outcome(Change(self.store.file_policy, self.store.api_exceptions, removed=expired),
                       self._spread(self._index.update(removed=expired)))

    def _apply(self, change, now=None):
        incremental = _only_exceptions_differ(change.file_policy, self.store.file_policy)
        self.store.commit(change)  # StateUnavailable: nothing changed
        if incremental:
            # Exceptions alone (an API change, or a reload that changed only
            # exceptions): their flows, whatever the size of the policy. One
            # the file gives already expired is not in force.
            added = [e for e in change.added if e.is_active(self._as_of)]
            return Outcome(change, self._spread(self._index.update(added, change.removed)))
        self._rebuild(now or utc_now())
        diffs = {}
        for dpid, old in self._desired.items():
            new = compile_switch(self.policy, dpid, self._as_of)
            diffs[dpid] = diff_rules(old, new)
            self._desired[dpid] = set(new)
        return Outcome(change, diffs)

    def _spread(self, exception_diff):
        """Exception flows are the same on every enforcing switch and absent on inside ones."""
        diffs = {}
        for dpid, rules in self._desired.items():
            diff = exception_diff if self.enforcing(dpid) else NO_CHANGE
            if diff:
                rules.difference_update(diff.delete)
                rules.update(diff.add)
            diffs[dpid] = diff
        return diffs



def _only_exceptions_differ(new, old):
    """True if two file policies differ in their exceptions at most: then
    every other flow stays, and the exception index can take the change."""
    if new is old:
        return True
    return all(getattr(new, f.name) == getattr(old, f.name)
               for f in dataclasses.fields(old) if f.name not in ("exceptions", "source"))
