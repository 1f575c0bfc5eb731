"""Pipeline profiles: how the policy is laid out in a switch's flow tables,
declared as data, and which profile a switch gets (issue 14, docs/hardware.md).

Open vSwitch runs the three-table pipeline (smtp_border/compiler.py) with
write-metadata, goto-table, meters and ONF bundles. Most campus edge switches
have fewer of these: Aruba's OpenFlow 1.3 tables have no write-metadata,
Dell OS9 no goto-table or meters, Dell N-series one hardware table, OF-DPA
switches (Edgecore, Pica8) a fixed ACL table at id 60. So each switch gets a
Profile:

* MULTI_TABLE: classify (0) -> policy (1) -> forward (2), direction in two
  metadata bits; an exception is one flow in table 1.
* single_table: everything in one table of priorities
  (smtp_border/single_table.py), at table 0 or the switch's fixed ACL table;
  no metadata, no goto-table.

and, independently, whether blocked packets are sampled through meters (a
switch without meters drops them unsampled: the audit then has flow counters
only) and whether the switch can match Open vSwitch's ip_frag (without it the
guard against unreadable ports drops every TCP fragment, fail closed).

Each Profile declares its tables: what each may match and which instructions
it uses. `Profile.check` holds compiled flows to that declaration (the tests
do, for every profile and random policies), and `choose` compares it with
what a switch says of itself in its table features.
"""
import dataclasses
from dataclasses import dataclass
from typing import ClassVar, FrozenSet, Optional, Tuple

from .policy import PIPELINES
from .rules import ETH_TYPE_IPV6, POLICY_TABLE

# Instruction kinds, as OpenFlow 1.3 table features name them.
GOTO_TABLE = "goto_table"
WRITE_METADATA = "write_metadata"
APPLY_ACTIONS = "apply_actions"
METER = "meter"

AUTO, MULTI, SINGLE = PIPELINES  # switches[].pipeline

# What the policy matches, by Match attribute -> the OXM names a switch
# lists in its table features (either family will do for an address).
_OXM_OF = {
    "in_port": ("in_port",),
    "metadata": ("metadata",),
    "eth_type": ("eth_type",),
    "ip_proto": ("ip_proto",),
    "tcp_dst": ("tcp_dst",),
    "ip_src": ("ipv4_src", "ipv6_src"),
    "ip_dst": ("ipv4_dst", "ipv6_dst"),
    "ip_frag": ("ip_frag",),
}


@dataclass(frozen=True)
class TableSpec:
    """One table of a pipeline: what its flows may match and do."""

    id: int
    name: str
    matches: FrozenSet[str]  # Match attributes
    instructions: FrozenSet[str]  # instruction kinds
    next_tables: FrozenSet[int] = frozenset()


def _table(id_, name, matches, instructions, next_tables=()):
    return TableSpec(id_, name, frozenset(matches.split()), frozenset(instructions.split()), frozenset(next_tables))


@dataclass(frozen=True)
class Profile:
    """How one switch holds the policy. Frozen and hashable: switches with
    the same profile and uplinks share their exception flows. The layouts
    are the subclasses (MultiTable, SingleTable): each says what it does,
    and nothing outside this module asks which one a switch has."""

    meters: bool = True  # blocked packets sampled through the audit meters
    frag_match: bool = True  # the switch matches Open vSwitch's ip_frag

    name: ClassVar[str]  # switches[].pipeline

    @staticmethod
    def named(name, **fields):
        """The profile that switches[].pipeline `name` means."""
        return {MULTI: MultiTable, SINGLE: SingleTable}[name](**fields)

    @property
    def tables(self):
        """The tables this profile uses, declared."""
        raise NotImplementedError

    @property
    def table_ids(self):
        return tuple(t.id for t in self.tables)

    @property
    def exception_table(self):
        """The table that holds the exception flows (the one that grows, and
        the budget counts) and the sampled blocks."""
        raise NotImplementedError

    def _extras(self):
        return ((" ip_frag" if self.frag_match else ""), (f" {METER}" if self.meters else ""))

    def describe(self):
        parts = [self._title()]
        if not self.meters:
            parts.append("no meters")
        if not self.frag_match:
            parts.append("no ip_frag")
        return ", ".join(parts)

    def _title(self):
        return self.name

    def to_dict(self):
        return {"pipeline": self.name, "tables": list(self.table_ids), "meters": self.meters,
                "frag_match": self.frag_match}

    def compile(self, policy, dpid, now=None):
        """The complete rule set of switch `dpid` in this profile."""
        raise NotImplementedError

    def exception_rule(self, network, inbound, by_port):
        """The flow of one merged exception network in this profile."""
        raise NotImplementedError

    def plan(self, held, desired):
        """How a switch without bundles is taken from the flows it `held`
        (FlowRules and foreign flows) to `desired`, flow mod by flow mod,
        never letting through what both block nor blocking what both allow
        (smtp_border/ordering.py has the proofs): (policy-table version the
        switch then holds, phases of (ADD or DELETE, rule or foreign flow))."""
        raise NotImplementedError

    def change_phases(self, diff, version):
        """The phases of flow mods that deliver one change's `diff` to a
        switch without bundles holding policy-table `version`; None when
        the change cannot go in place (the switch is read and taken through
        `plan` instead)."""
        raise NotImplementedError

    def check(self, rules):
        """Raise ValueError naming the first rule that uses a table, match
        field or instruction this profile does not declare."""
        tables = {t.id: t for t in self.tables}
        for rule in rules:
            table = tables.get(rule.table)
            if table is None:
                raise ValueError(f"{self.describe()}: flow in undeclared table {rule.table}: {rule}")
            used = {name for name, value in vars(rule.match).items() if value is not None}
            if used - table.matches:
                raise ValueError(f"{self.describe()}: table {table.name} does not match {sorted(used - table.matches)}")
            wanted = instruction_kinds(rule.instructions)
            if wanted - table.instructions:
                raise ValueError(f"{self.describe()}: table {table.name} does not do {sorted(wanted - table.instructions)}")
            goto = rule.instructions.goto_table
            if goto is not None and goto not in table.next_tables:
                raise ValueError(f"{self.describe()}: table {table.name} cannot go to table {goto}")


@dataclass(frozen=True)
class MultiTable(Profile):
    """classify (0) -> policy (1) -> forward (2), direction in two metadata
    bits; an exception is one flow in table 1, versioned so that a
    classification change can go in place in two phases."""

    name: ClassVar[str] = MULTI

    @property
    def tables(self):
        frag, meter = self._extras()
        return (
            _table(0, "classify", "in_port eth_type ip_proto tcp_dst ip_src" + frag,
                   f"{WRITE_METADATA} {GOTO_TABLE} {APPLY_ACTIONS}", (1, 2)),
            _table(1, "policy", "metadata eth_type ip_src ip_dst", f"{GOTO_TABLE} {APPLY_ACTIONS}" + meter, (2,)),
            _table(2, "forward", "", APPLY_ACTIONS),
        )

    @property
    def exception_table(self):
        return POLICY_TABLE

    def compile(self, policy, dpid, now=None):
        from .compiler import compile_switch

        return compile_switch(policy, dpid, now, meters=self.meters, frag_match=self.frag_match)

    def exception_rule(self, network, inbound, by_port):
        from .compiler import exception_rule

        return exception_rule(network, inbound)

    def plan(self, held, desired):
        from . import ordering

        return ordering.plan(held, desired)

    def change_phases(self, diff, version):
        # Only a change of exceptions (allow flows in table 1) goes in place;
        # a change of classification is read and planned in two versions.
        from . import ordering
        from .rules import with_version

        if not ordering.is_allow_only(diff):
            return None
        return [phase for phase in ([(ordering.ADD, with_version(r, version)) for r in diff.add],
                                    [(ordering.DELETE, with_version(r, version)) for r in diff.delete]) if phase]


@dataclass(frozen=True)
class SingleTable(Profile):
    """Everything in one table of priorities (smtp_border/single_table.py),
    at table 0 or the switch's fixed ACL table; no metadata, no goto-table."""

    table: int = 0
    name: ClassVar[str] = SINGLE

    @property
    def tables(self):
        frag, meter = self._extras()
        return (_table(self.table, "acl", "in_port eth_type ip_proto tcp_dst ip_src ip_dst" + frag,
                       APPLY_ACTIONS + meter),)

    @property
    def exception_table(self):
        return self.table

    def _title(self):
        return f"{self.name} (table {self.table})"

    def compile(self, policy, dpid, now=None):
        from .single_table import compile_single_table

        return compile_single_table(policy, dpid, now, table=self.table, meters=self.meters,
                                    frag_match=self.frag_match)

    def exception_rule(self, network, inbound, by_port):
        from .single_table import single_table_exception_rule

        return single_table_exception_rule(network, inbound, by_port, self.table)

    def plan(self, held, desired):
        from . import ordering

        return 0, ordering.plan_one_table(held, desired)

    def change_phases(self, diff, version):
        from . import ordering

        return ordering.one_table_phases(diff.add, diff.delete)


MULTI_TABLE = MultiTable()


def instruction_kinds(instructions):
    kinds = set()
    if instructions.write_metadata is not None:
        kinds.add(WRITE_METADATA)
    if instructions.goto_table is not None:
        kinds.add(GOTO_TABLE)
    if instructions.sample_meter is not None:
        kinds.update((METER, APPLY_ACTIONS))
    if instructions.output_normal:
        kinds.add(APPLY_ACTIONS)
    return kinds


# -- what a switch says of itself -----------------------------------------------


@dataclass(frozen=True)
class TableFeatures:
    """One table as a switch describes it (OFPMP_TABLE_FEATURES)."""

    table_id: int
    max_entries: int
    instructions: FrozenSet[str]  # instruction kinds
    next_tables: FrozenSet[int]
    matches: FrozenSet[str]  # OXM field names (Ryu's spelling)
    name: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What the probe learned when the switch connected. None: not known
    (the switch did not answer that request)."""

    n_tables: Optional[int] = None  # from the features reply
    tables: Optional[Tuple[TableFeatures, ...]] = None  # table features
    max_meters: Optional[int] = None  # meter features

    @property
    def frag_match(self):
        """Whether any table lists Open vSwitch's ip_frag; None without table features."""
        return None if self.tables is None else any("ip_frag" in t.matches for t in self.tables)

    def table(self, table_id):
        for t in self.tables or ():
            if t.table_id == table_id:
                return t
        return None


@dataclass(frozen=True)
class Choice:
    """The profile a switch gets, why, and its entry budget."""

    profile: Profile
    reasons: Tuple[str, ...]
    budget: Optional[int] = None  # entries of profile.exception_table; None: unknown
    budget_source: Optional[str] = None  # "policy" (table_size) or "table features"
    ipv6_entry_cost: int = 1
    explicit: bool = False

    def to_dict(self):
        return dict(self.profile.to_dict(), chosen="policy" if self.explicit else "auto", reasons=list(self.reasons),
                    budget=self.budget, budget_source=self.budget_source, ipv6_entry_cost=self.ipv6_entry_cost)


def _needs(table_spec):
    """(OXM names any of which must be listed, per attribute; instruction kinds)."""
    return [_OXM_OF[m] for m in sorted(table_spec.matches)], table_spec.instructions


def _fits(features, table_spec):
    """Why `features` cannot hold `table_spec`'s flows (empty: it can)."""
    missing = []
    for names in _needs(table_spec)[0]:
        if not any(n in features.matches for n in names):
            missing.append(f"match {'/'.join(names)}")
    for kind in sorted(table_spec.instructions - {METER} - features.instructions):
        missing.append(kind)
    for nxt in sorted(table_spec.next_tables - features.next_tables):
        missing.append(f"goto table {nxt}")
    return missing


def choose(spec, caps):
    """The profile for a switch listed as `spec` (None: an inside switch)
    that described itself as `caps`. The policy's explicit choice always
    wins (switches misreport); `auto` takes the three-table pipeline where
    the switch's table features allow it, else one table: the one the policy
    names, or the first whose features hold the policy's matches."""
    caps = caps or Capabilities()
    reasons = []
    wanted = getattr(spec, "pipeline", AUTO)
    table = getattr(spec, "table", None)
    meters = True
    if getattr(spec, "meters", None) is False:
        meters = False
        reasons.append("meters: false in the policy: blocked packets are dropped unsampled; the audit has flow "
                       "counters only")
    elif caps.max_meters is not None and caps.max_meters < 2:
        meters = False
        reasons.append(f"{caps.max_meters} meters (2 needed): blocked packets are dropped unsampled; "
                       "the audit has flow counters only")
    frag = True
    if caps.frag_match is False:
        frag = False
        reasons.append("no ip_frag match: the switch reads every TCP fragment's port as 0, and the guard for unreadable ports drops them all")
    base = MultiTable(meters=meters, frag_match=frag)
    if wanted == MULTI:
        profile, explicit = base, True
        reasons.insert(0, "multi_table: set in the policy")
    elif wanted == SINGLE:
        profile, explicit = SingleTable(meters=meters, frag_match=frag, table=table or 0), True
        reasons.insert(0, f"single_table at table {table or 0}: set in the policy")
    else:
        explicit = False
        profile, why = _auto(base, caps, table)
        reasons[:0] = why
    budget, source = None, None
    if getattr(spec, "table_size", None) is not None:
        budget, source = spec.table_size, "policy"
    else:
        features = caps.table(profile.exception_table)
        if features is not None and features.max_entries:
            budget, source = features.max_entries, "table features"
    return Choice(profile, tuple(reasons), budget, source, getattr(spec, "ipv6_entry_cost", 1), explicit)


def _auto(base, caps, table):
    if caps.tables is None:
        if caps.n_tables is not None and caps.n_tables < 3:
            single = SingleTable(meters=base.meters, frag_match=base.frag_match, table=table or 0)
            return single, (f"single_table at table {single.table}: the switch has {caps.n_tables} table(s) "
                            "and no table features",)
        return base, ("multi_table: no table features to go by; "
                      f"{'unknown number of' if caps.n_tables is None else caps.n_tables} tables",)
    gaps = []
    for spec_table in base.tables:
        features = caps.table(spec_table.id)
        if features is None:
            gaps.append(f"no table {spec_table.id}")
            continue
        missing = _fits(features, spec_table)
        if missing:
            gaps.append(f"table {spec_table.id} has no {', '.join(missing)}")
    if not gaps:
        return base, ("multi_table: tables 0-2 have what it needs",)
    single = SingleTable(meters=base.meters, frag_match=base.frag_match)
    why = "; ".join(gaps)
    candidates = [table] if table is not None else [t.table_id for t in sorted(caps.tables, key=lambda t: t.table_id)]
    for table_id in candidates:
        features = caps.table(table_id)
        if features is not None and not _fits(features, dataclasses.replace(single, table=table_id).tables[0]):
            return dataclasses.replace(single, table=table_id), (f"single_table at table {table_id}: multi_table "
                                                                  f"cannot run ({why})",)
    fallback = table if table is not None else 0
    return dataclasses.replace(single, table=fallback), (
        f"single_table at table {fallback}: multi_table cannot run ({why}), and no table lists every match the "
        "policy needs; trying anyway", )


# -- budgets ----------------------------------------------------------------------


def entries(rules, table, ipv6_entry_cost=1):
    """How many entries `rules` take in `table`, an IPv6 flow counting
    `ipv6_entry_cost` (many ASICs hold an IPv6 ACL entry in two slots)."""
    total = 0
    for rule in rules:
        if rule.table == table:
            total += ipv6_entry_cost if rule.match.eth_type == ETH_TYPE_IPV6 else 1
    return total


class OverBudget(Exception):
    """A change would need more entries than a switch has."""

    def __init__(self, dpid, name, table, needed, available, source):
        self.dpid, self.name, self.table = dpid, name, table
        self.needed, self.available, self.source = needed, available, source
        super().__init__(str(self))

    def __str__(self):
        who = f"{self.dpid:016x}" + (f" ({self.name})" if self.name else "")
        return (f"switch {who} would need {self.needed} entries in table {self.table}, and has {self.available} "
                f"(from {self.source})")

    def to_dict(self):
        return {"dpid": f"{self.dpid:016x}", "name": self.name, "table": self.table, "needed": self.needed,
                "available": self.available, "budget_from": self.source}
