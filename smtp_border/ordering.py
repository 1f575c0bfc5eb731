"""Changes for switches without bundles: flow mods in an order that never lets
through what both the old and the new policy block, and never blocks what
both allow.

A switch with ONF bundles applies a change atomically. One without applies
flow mods one by one, and a packet may meet any of the tables in between. The
naive order (every add, then every delete) passes through the union of the
two rule sets, and that union can allow what both block: on a switch that
decides by addresses, campus prefixes [10.20/16, 10.40/16] -> [10.20/16,
10.50/16] and the packet 10.50.1.1 -> 10.40.1.1:25 is blocked by both
(Part 1 before, Part 2 after), but the union classifies 10.50.1.1 as
campus (new) and lets campus reach 10.40/16 (old).

Two cases:

* The classification (table 0), the blocks and the default of the policy
  table, and the forwarding table are the same before and after: only allow
  flows above the blocks differ (exception and gateway changes, the common
  case). A packet is allowed iff an allow matches or no block does, so
  adding first and deleting last passes only through tables whose verdict
  is old's or new's for every packet.

* Anything else changes: a two-phase update (Reitblatt et al., "Abstractions
  for network update", SIGCOMM 2012) with the version bit of the metadata
  (rules.VERSION_BIT). The new policy table is added under the other
  version, where no packet reaches it yet; table 0 is switched over one flow
  at a time, highest priority first, each add replacing the old flow with
  the same match; then the old table-0 flows that are gone are deleted one
  at a time, lowest priority first; then the old version's policy table.
  At every step a packet's table-0 winner is either its winner in the old
  table 0 (an old flow: no higher old flow was removed or replaced, else
  that one would win) or in the new one (a new flow: every higher new flow
  is in place), and the version it carries sends it to that policy's
  table: each packet is judged wholly by old or wholly by new.

Each phase must be confirmed (a barrier) before the next is sent: OpenFlow
lets a switch reorder messages between barriers.

What it cannot promise: flows in the owned tables that are not ours (added by
hand, or by a release that matched no version) keep matching both versions
until they are deleted; tests/unit/test_ordering.py and the OVS trace test
check the promise for rule sets this compiler makes.
"""
import collections

from .compiler import PRIO_BLOCK
from .rules import CLASSIFY_TABLE, FORWARD_TABLE, POLICY_TABLE, rule_version, with_version

ADD = "add"
DELETE = "delete"


def is_allow_only(diff):
    """True if a RuleDiff touches only allow flows above the blocks of the
    policy table: safe to send adds first, then deletes, in any version."""
    return all(
        r.table == POLICY_TABLE and r.priority > PRIO_BLOCK and not r.instructions.drops
        for r in diff.add + diff.delete
    )


def current_version(rules):
    """The version most of the switch's classifying flows write, or None if
    none writes one (empty tables, or flows that are not ours)."""
    # Flows that are not ours (no instructions we know) write no version.
    counts = collections.Counter(rule_version(r) for r in rules
                                 if r.table == CLASSIFY_TABLE and hasattr(r, "instructions"))
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else None


def plan(old, new):
    """(version, phases): how to take a switch holding `old` to the canonical
    rule set `new` (version 0, as the compiler emits it).

    `old` may hold rules of either version and flows that are not ours (any
    object with table, priority and key). Returns the version the switch
    holds afterwards and a list of phases, each a list of (ADD or DELETE,
    rule), to be sent in order with a barrier after each phase."""
    old = list(old)
    version = current_version(old)
    same = version is not None and _skeleton(old) == _skeleton(with_version(r, version) for r in new)
    if same:
        target = {with_version(r, version) for r in new}
        return version, _adds_then_deletes(old, target)
    version = 0 if version is None else 1 - version
    target = {with_version(r, version) for r in new}
    return version, _two_phase(old, target)


def _adds_then_deletes(old, target):
    held = set(old)
    keys = {r.key for r in target}
    adds = [(ADD, r) for r in target if r not in held]
    deletes = [(DELETE, r) for r in old if r.key not in keys]
    return [phase for phase in (adds, deletes) if phase]


def _two_phase(old, target):
    held = set(old)
    keys = {r.key for r in target}

    def new_in(table):
        return [r for r in target if r.table == table and r not in held]

    def gone_from(table):
        return [r for r in old if r.table == table and r.key not in keys]

    phases = [
        [(ADD, r) for r in new_in(FORWARD_TABLE)],
        [(ADD, r) for r in new_in(POLICY_TABLE)],
    ]
    phases += [[(ADD, r)] for r in sorted(new_in(CLASSIFY_TABLE), key=lambda r: -r.priority)]
    phases += [[(DELETE, r)] for r in sorted(gone_from(CLASSIFY_TABLE), key=lambda r: r.priority)]
    phases.append([(DELETE, r) for r in gone_from(POLICY_TABLE)])
    phases.append([(DELETE, r) for r in gone_from(FORWARD_TABLE)])
    # Flows in tables we do not own are not ours to touch.
    return [phase for phase in phases if phase]


def _skeleton(rules):
    """What must be equal for adds-then-deletes to be safe: table 0, table 2,
    and the policy table's flows at or below its highest block."""
    rules = list(rules)
    if any(not hasattr(r, "instructions") for r in rules):
        return None  # flows that are not ours: never "the same"
    blocks = [r.priority for r in rules if r.table == POLICY_TABLE and r.instructions.drops]
    top = max(blocks, default=-1)
    return frozenset(
        r for r in rules
        if r.table != POLICY_TABLE or r.priority <= top or r.instructions.drops
    )


# -- one table (the single_table profile) -------------------------------------
#
# One table has no metadata to carry a version, so there is no two-phase
# update. What it can promise instead: at every step each packet gets the
# old policy's verdict, the new one's, or a drop. It never lets through what
# both block; a packet both allow may be dropped for the moment between two
# phases. The order:
#
#   1. add the new drops (adding a drop can only turn verdicts into drops);
#   2. delete the allows that are gone, and add the new allows (a packet
#      whose winner is now a new allow: every higher new flow that drops is
#      in place since phase 1, so new allows it too; one whose winner is an
#      old allow: every old drop is still there, so old allowed it);
#   3. delete the drops that are gone and flows that are not ours (their
#      verdict unknown), lowest priority first, one priority per phase: a
#      packet whose winner goes falls to the highest flow below, and every
#      leftover below is gone already, so that is a new flow: new's verdict.
#
# A flow replaced in place (same key, other instructions) counts as its new
# self. tests/unit/test_ordering.py checks the promise at every step.


def plan_one_table(old, new):
    """Phases taking a one-table switch holding `old` (FlowRules and flows
    not ours) to `new`."""
    held = set(old)
    keys = {r.key for r in new}
    return one_table_phases([r for r in new if r not in held], [r for r in old if r.key not in keys])


def one_table_phases(adds, gone):
    """The phases for flows added or replaced (`adds`) and flows whose key is
    gone (`gone`): a list of phases, each a list of (ADD or DELETE, rule)."""
    phases = [[(ADD, r) for r in adds if _drops(r)],
              [(DELETE, r) for r in gone if _allows(r)] + [(ADD, r) for r in adds if not _drops(r)]]
    leftovers = collections.defaultdict(list)
    for r in gone:
        if not _allows(r):
            leftovers[r.priority].append((DELETE, r))
    phases += [leftovers[p] for p in sorted(leftovers)]
    return [phase for phase in phases if phase]


def _drops(rule):
    return rule.instructions.drops


def _allows(rule):
    """An allow of ours; flows not ours (no instructions we know) might drop."""
    return hasattr(rule, "instructions") and not rule.instructions.drops
