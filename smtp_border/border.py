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

Each switch has a pipeline profile (smtp_border/pipeline.py: chosen by the
policy, or from what the switch said of itself when it connected) and
perhaps an entry budget; its flows are compiled for that profile, and a
change that would take a switch over its budget is refused before anything
is saved or sent.

An invalid change raises (PolicyError, Conflict, NotFound), one that does
not fit a switch OverBudget, and a change that cannot be saved raises
StateUnavailable; in every case nothing changed.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from .compiler import ExceptionIndex
from .diff import RuleDiff, diff_rules
from .pipeline import OverBudget, choose, entries
from .policy import cyclic_gc_paused, utc_now
from .store import Change, PolicyStore

NO_CHANGE = RuleDiff((), ())


@dataclass(frozen=True)
class Listing:
    """What the policy says of one switch, for those who only need to name
    it, pin its certificate or know whether it enforces (status, TLS,
    sampling): no compile. An unlisted switch is `inside`: it forwards."""
    dpid: int
    enforcing: bool
    name: Optional[str] = None
    uplinks: Tuple[int, ...] = ()
    certificate_sha256: Optional[str] = None  # TLS pin; None: any campus certificate
    bundles_allowed: bool = True  # False: the policy says never send it a bundle

    @property
    def role(self):
        return "enforcing" if self.enforcing else "inside"


@dataclass(frozen=True, eq=False)
class Target:
    """What one switch must hold, in one answer (Border.target): what the
    policy says of it (`listing`), its profile and budget (`choice`), the
    flows it should hold (`flows`: the core's own set, not to be modified),
    whether they fit its budget (`over`: the OverBudget to refuse with, or
    None), and in which order a switch without bundles is taken there
    (`plan`, `phases`: the profile's, see smtp_border/ordering.py)."""
    listing: Listing
    choice: object
    flows: set
    over: object

    @property
    def dpid(self):
        return self.listing.dpid

    @property
    def enforcing(self):
        return self.listing.enforcing

    @property
    def profile(self):
        return self.choice.profile

    def plan(self, held):
        """(version, phases of flow mods) taking a switch that holds `held` to `flows`."""
        return self.profile.plan(held, self.flows)

    def phases(self, diff, version):
        """The flow mods of one change's `diff`, in order; None: reconcile through `plan`."""
        return self.profile.change_phases(diff, version)


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
    def __init__(self, policy_file, state_file=None, now=None, state=None):
        """PolicyError if policy.yaml (or the state file) cannot be read;
        API exceptions the file contradicts are quarantined, not fatal.
        `state`: where API exceptions live if not in the journal file
        (smtp_border/etcdstate.EtcdState, shared by every replica)."""
        with cyclic_gc_paused():  # hundreds of thousands of objects, no garbage
            self.store = PolicyStore(policy_file, state_file, state)
            self._desired = {}  # dpid -> set of FlowRule the switch should hold
            self._entries = {}  # dpid -> entries its desired flows take in its budgeted table
            self._capabilities = {}  # dpid -> pipeline.Capabilities from its probe
            self._choices = {}  # dpid -> pipeline.Choice under the policy in force
            # (profile, what of the spec the flows depend on) -> compiled rules, under the policy
            # in force and _as_of: a hundred edge switches alike are compiled once.
            self._compiled = {}
            self._as_of = now or utc_now()
            self._index = ExceptionIndex(self.policy, self._as_of)

    @property
    def policy(self):
        return self.store.policy

    @property
    def active_ids(self):
        """Ids of the exceptions enforced now (not expired)."""
        return self._index.members

    # -- the flows of each switch ----------------------------------------------

    def probed(self, dpid, capabilities):
        """What switch `dpid` said of itself when it connected (its table
        features, meters); returns the Choice of profile it gets. Its flows
        are compiled anew for that profile."""
        self._capabilities[dpid] = capabilities
        self._choices.pop(dpid, None)
        self.forget(dpid)
        return self.choice(dpid)

    def choice(self, dpid, policy=None):
        """The profile switch `dpid` gets (pipeline.Choice): the policy's
        explicit choice, or what its probe allows."""
        if policy is not None:
            return choose(policy.switch_spec(dpid), self._capabilities.get(dpid))
        choice = self._choices.get(dpid)
        if choice is None:
            choice = self._choices[dpid] = choose(self.policy.switch_spec(dpid), self._capabilities.get(dpid))
        return choice

    def profile(self, dpid):
        return self.choice(dpid).profile

    def flows(self, dpid):
        """The rules switch `dpid` should hold now. Compiled once, then kept
        up to date by every change; the caller must not modify the set."""
        rules = self._desired.get(dpid)
        if rules is None:
            profile = self.profile(dpid)
            key = (profile, _compiled_alike(self.policy.switch_spec(dpid)))
            compiled = self._compiled.get(key)
            if compiled is None:
                compiled = self._compiled[key] = profile.compile(self.policy, dpid, self._as_of)
            rules = self._desired[dpid] = set(compiled)
            self._count(dpid, self.choice(dpid), rules)
        return rules

    def warm(self):
        """Compile, before any switch connects, the flows of every listed
        switch in the profile it gets without a probe's word against it (the
        three-table pipeline, as Open vSwitch gets; or the policy's explicit
        choice). The first switch to connect after a start then finds them
        ready, as later ones do, instead of compiling during its install
        (about 150 ms at 10,000 exceptions). Switches alike are compiled
        once. Returns how many compiles it did."""
        done = 0
        for spec in self.policy.switches or ():
            profile = choose(spec, self._capabilities.get(spec.dpid)).profile
            key = (profile, _compiled_alike(spec))
            if key not in self._compiled:
                self._compiled[key] = profile.compile(self.policy, spec.dpid, self._as_of)
                done += 1
        return done

    def target(self, dpid):
        """Everything the delivery layer needs of switch `dpid`, at once."""
        flows = self.flows(dpid)
        return Target(self.listing(dpid), self.choice(dpid), flows, self.over_budget(dpid))

    def listing(self, dpid):
        """What the policy says of switch `dpid` (Listing), without compiling."""
        spec = self.policy.switch_spec(dpid)
        if spec is None:
            return Listing(dpid, False)
        return Listing(dpid, True, spec.name, tuple(spec.uplinks), spec.certificate_sha256, spec.bundles is not False)

    def forget(self, dpid):
        """Stop tracking a switch (it disconnected); flows() compiles it anew."""
        self._desired.pop(dpid, None)
        self._entries.pop(dpid, None)

    def disconnected(self, dpid):
        """Forget a switch and what it said of itself: it may come back as another device."""
        self.forget(dpid)
        self._capabilities.pop(dpid, None)
        self._choices.pop(dpid, None)

    def budget(self, dpid):
        """(entries needed, entries available or None, Choice) for a tracked switch."""
        choice = self.choice(dpid)
        self.flows(dpid)
        return self._entries.get(dpid), choice.budget, choice

    def over_budget(self, dpid):
        """OverBudget if switch `dpid`'s desired flows do not fit its budget, else None."""
        needed, _, choice = self.budget(dpid)
        return _over(dpid, self.policy, choice, needed)

    def _count(self, dpid, choice, rules):
        self._entries[dpid] = entries(rules, choice.profile.exception_table, choice.ipv6_entry_cost)

    def enforcing(self, dpid):
        return self.policy.switch_spec(dpid) is not None

    def listed(self):
        """The switches that must enforce: those listed in the policy, or None
        when it lists none (then every switch enforces by addresses)."""
        switches = self.policy.switches
        return None if switches is None else [s.dpid for s in switches]

    # -- changes -----------------------------------------------------------------

    def add(self, data, now=None, by=None):
        """Grant one exception (a request mapping); `by`: the client granting it, saved with it."""
        return self._apply(self.store.propose_add(data, now, by))

    def remove(self, exception_id):
        return self._apply(self.store.propose_remove(exception_id))

    def batch(self, additions, removals, now=None, by=None):
        return self._apply(self.store.propose_batch(additions, removals, now, by))

    def sync(self, events):
        """Exceptions another replica saved (etcd watch events): applied as
        any change, but not saved again, and not refused for a budget (they
        are in force on the cluster already; a switch they do not fit stays
        pending, and says so)."""
        return self._apply(self.store.propose_remote(events), budget=False)

    def reload(self, now=None):
        with cyclic_gc_paused():
            return self._apply(self.store.propose_reload(), now)

    def expire(self, now):
        """Withdraw the exceptions whose time has come; None if none has.
        (Withdrawing only frees entries: no budget can refuse it.)"""
        # One pass, testing only exceptions with an expiry time: this runs
        # every few seconds over policies of 10,000 exceptions.
        active = self._index.members
        expired = tuple(
            e for e in self.policy.exceptions if e.expires is not None and not e.is_active(now) and e.id in active
        )
        self._as_of = now
        if not expired:
            return None
        self._compiled = {}
        diffs = self._spread(self._index.update(removed=expired))
        self._install(diffs)
        return Outcome(Change(self.store.file_policy, self.store.api_exceptions, removed=expired), diffs)

    def _apply(self, change, now=None, budget=True):
        """Validate `change` against every tracked switch's budget, save it,
        then make it the desired state. OverBudget or StateUnavailable: nothing changed."""
        if _only_exceptions_differ(change.file_policy, self.store.file_policy):
            # Exceptions alone (an API change, or a reload that changed only
            # exceptions): their flows, whatever the size of the policy. One
            # the file gives already expired is not in force.
            added = [e for e in change.added if e.is_active(self._as_of)]
            network_change = self._index.update(added, change.removed)
            try:
                diffs = self._spread(network_change)
                if budget:
                    self._check_budgets(diffs)
                self.store.commit(change)
            except BaseException:
                self._index.revert(network_change)
                raise
            if network_change:
                self._compiled = {}
            self._install(diffs)
            return Outcome(change, diffs)
        now = now or utc_now()
        policy = change.policy
        new = {}
        for dpid in self._desired:
            choice = self.choice(dpid, policy)
            rules = choice.profile.compile(policy, dpid, now)
            new[dpid] = choice, rules
            over = _over(dpid, policy, choice, entries(rules, choice.profile.exception_table, choice.ipv6_entry_cost))
            if over is not None and budget:
                raise over
        index = ExceptionIndex(policy, now)
        self.store.commit(change)  # StateUnavailable: nothing changed
        self._as_of, self._index, self._choices, self._compiled = now, index, {}, {}
        diffs = {}
        for dpid, (choice, rules) in new.items():
            diffs[dpid] = diff_rules(self._desired[dpid], rules)
            self._desired[dpid] = set(rules)
            self._choices[dpid] = choice
            self._count(dpid, choice, rules)
        return Outcome(change, diffs)

    def _spread(self, network_change):
        """The RuleDiff of every tracked switch for a change of exceptions:
        rendered once per profile (and by-port or not), none on inside switches."""
        diffs, rendered = {}, {}
        for dpid in self._desired:
            spec = self.policy.switch_spec(dpid)
            if spec is None or not network_change:
                diffs[dpid] = NO_CHANGE
                continue
            profile = self.profile(dpid)
            key = (profile, spec.by_port)
            if key not in rendered:
                rendered[key] = network_change.render(
                    lambda network, inbound: profile.exception_rule(network, inbound, spec.by_port))
            diffs[dpid] = rendered[key]
        return diffs

    def _check_budgets(self, diffs):
        for dpid, diff in diffs.items():
            choice = self.choice(dpid)
            if choice.budget is None or not diff:
                continue
            table, cost = choice.profile.exception_table, choice.ipv6_entry_cost
            over = _over(dpid, self.policy, choice,
                         self._entries[dpid] + entries(diff.add, table, cost) - entries(diff.delete, table, cost))
            if over is not None:
                raise over

    def _install(self, diffs):
        for dpid, diff in diffs.items():
            if diff:
                rules = self._desired[dpid]
                rules.difference_update(diff.delete)
                rules.update(diff.add)
                choice = self.choice(dpid)
                table, cost = choice.profile.exception_table, choice.ipv6_entry_cost
                self._entries[dpid] += entries(diff.add, table, cost) - entries(diff.delete, table, cost)


def _compiled_alike(spec):
    """What of a switch's spec its compiled flows depend on: two switches
    equal in this (and in profile) get the same flows. None: an inside switch."""
    if spec is None:
        return None
    return dataclasses.replace(spec, dpid=0, name=None, certificate_sha256=None)


def _over(dpid, policy, choice, needed):
    """OverBudget if `needed` entries do not fit the switch's budget, else None."""
    if choice.budget is None or needed <= choice.budget:
        return None
    spec = policy.switch_spec(dpid)
    return OverBudget(dpid, spec.name if spec else None, choice.profile.exception_table, needed, choice.budget,
                      choice.budget_source)


def _only_exceptions_differ(new, old):
    """True if two file policies differ in their exceptions at most: then
    every other flow stays, and the exception index can take the change."""
    if new is old:
        return True
    return all(getattr(new, f.name) == getattr(old, f.name)
               for f in dataclasses.fields(old) if f.name not in ("exceptions", "source"))
