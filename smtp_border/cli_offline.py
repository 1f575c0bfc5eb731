"""The smtp-border commands that need no controller: on a policy file
(check, flows), on a journal (state check, state repair, journal-to-etcd),
and a client's token (token new). smtp_border/cli.py parses the command line."""
import dataclasses
import sys

from .pipeline import choose, entries
from .policy import PolicyError, load_policy, parse_exception
from .rules import sorted_rules, to_ofctl


class CliError(Exception):
    """One line for standard error; exit status 1."""


# -- offline ------------------------------------------------------------------

def cmd_check(args):
    policy = load_policy(args.file)
    listed = "every switch" if policy.switches is None else f"{len(policy.switches)} switch(es)"
    warnings = policy.warnings()
    print(f"{args.file}: OK: {len(policy.campus)} campus prefix(es), {len(policy.gateways)} gateway(s), "
          f"{len(policy.exceptions)} exception(s), enforced on {listed}"
          + (f"; {len(warnings)} warning(s)" if warnings else ""))
    if args.warnings:
        for warning in warnings:
            print(f"warning: {warning}")
    elif warnings:
        print("(--warnings lists them)")


def cmd_flows(args):
    policy = load_policy(args.file)
    if args.dpid is not None:
        switches = [(args.dpid, _switch_name(policy, args.dpid))]
    elif policy.switches is None:
        switches = [(0, "every switch")]
    else:
        switches = [(s.dpid, s.name or "") for s in policy.switches]
    for dpid, name in switches:
        spec = policy.switch_spec(dpid)
        if args.pipeline is not None and spec is not None:
            spec = dataclasses.replace(spec, pipeline=args.pipeline)
        choice = choose(spec, None)
        profile = choice.profile
        rules = sorted_rules(profile.compile(policy, dpid))
        label = f"dpid {dpid:016x}" + (f" ({name})" if name else "")
        needed = entries(rules, profile.exception_table, choice.ipv6_entry_cost)
        budget, source = (args.table_size, "--table-size") if args.table_size is not None else (
            choice.budget, "switches[].table_size")
        if args.count:
            room = ("no budget known (the switch tells it when it connects; switches[].table_size sets it)"
                    if budget is None else f"budget {budget} ({source}), headroom {budget - needed}")
            print(f"{label}: {len(rules)} flows, {profile.describe()}; {needed} entries in table "
                  f"{profile.exception_table}, {room}")
        else:
            print(f"# {label}: {len(rules)} flows, {profile.describe()}")
            for rule in rules:
                print(" " + to_ofctl(rule))
        if budget is not None and needed > budget:
            print(f"smtp-border: warning: {label} needs {needed} entries in table {profile.exception_table}, more "
                  f"than its budget {budget} ({source})", file=sys.stderr)


def cmd_journal_to_etcd(args):
    """All of a journal's exceptions into etcd, in its order, as one
    transaction: into an empty etcd only (never over what controllers
    sharing it have granted since)."""
    from .etcdstate import ConcurrentChange, EtcdState
    from .state import StateUnavailable, read_state

    if not args.etcd:
        raise CliError("say where etcd is: --etcd http://127.0.0.1:2379[,...] (or set SMTP_POLICY_ETCD)")
    items = []
    for item in read_state(args.journal):
        try:  # keys are addresses as the controller spells them (10.20.3.10/32)
            item = dict(item, address=str(parse_exception(item, None, source=args.journal, recorded=True).address))
        except PolicyError:
            pass  # copied as it is: the controllers quarantine it, as they would from the journal
        items.append(item)
    try:
        shared = EtcdState(args.etcd)
        held = shared.load()
        if held:
            raise CliError(f"{shared.path} holds {len(held)} exception(s) already; nothing copied (migrate into an"
                           " empty etcd, before the controllers use it)")
        shared.record(removed=[], added=items)
    except (ValueError, StateUnavailable, ConcurrentChange) as err:
        raise CliError(f"nothing copied: {err}") from None
    print(f"{len(items)} exception(s) copied from {args.journal} into {shared.path}")


def _switch_name(policy, dpid):
    spec = policy.switch_spec(dpid)
    if spec is None:
        return "inside switch"
    return spec.name or ""


def cmd_state_check(args):
    from .state import check

    try:
        problems = check(args.file)
    except OSError as err:
        raise CliError(f"{args.file}: {err.strerror or err}") from None
    if not problems:
        print(f"{args.file}: OK: every line reads")
        return
    for number, problem in problems:
        print(f"{args.file}:{number}: {problem}")
    raise CliError(f"{args.file}: {len(problems)} problem(s); `smtp-border state repair {args.file}` keeps every"
                   " valid line and sets the others aside")


def cmd_state_repair(args):
    from .state import repair

    try:
        backup, side, kept, dropped = repair(args.file)
    except OSError as err:
        raise CliError(f"{args.file}: {err.strerror or err}; nothing changed") from None
    print(f"{args.file}: kept {kept} change line(s), set aside {dropped}" + (f" in {side}" if side else "")
          + f"; the file as it was is {backup}")


def cmd_token_new(args):
    from .clients import ClientsError, new_token

    try:
        token, line = new_token(args.name, args.scope)
    except ClientsError as err:
        raise CliError(str(err)) from None
    print(f"token for {args.name} ({args.scope}); give it to the client once, it is not kept anywhere:\n  {token}\n"
          f"add this line to the controller's SMTP_POLICY_TOKENS_FILE (read again when it changes, no restart):\n"
          f"  {line}")
