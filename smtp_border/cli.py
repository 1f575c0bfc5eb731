"""smtp-border: the operator's command line.

Offline, on a policy file:
    smtp-border check policy.yaml
    smtp-border flows policy.yaml [--dpid 1] [--count] [--table-size 2000]

Against a running controller's REST API (--url or $SMTP_BORDER_URL,
--token or $SMTP_POLICY_TOKEN):
    smtp-border exceptions list
    smtp-border exceptions add 10.20.3.10 --direction outbound --needs-message-size 200MB --reason "..."
                                          [--contact ...] [--expires ...]
    smtp-border exceptions rm ID
    smtp-border reload
    smtp-border blocked [--since 2026-11-27T00:00:00Z] [--limit 50]
    smtp-border top [--window 24h]
    smtp-border mailservers [--soon-days 30] [--expiring]
    smtp-border history [--since 2026-12-01T00:00:00Z] [--limit 100]
    smtp-border explain SRC DST [--port 25]

Making a named client's token (for SMTP_POLICY_TOKENS_FILE):
    smtp-border token new NAME [--scope write|read]

The URL and tokens may be kept in ~/.config/smtp-border/env (mode 600).

Exit status (for scripts):
    0  done: a change is enforced on every listed switch
    1  refused, or an error (one line on standard error saying why)
    2  usage: a command, flag or value the CLI does not take
    3  accepted and saved, but still pending on some switch (the controller
       keeps at it; `smtp-border exceptions list` and the status page say where)
"""
import argparse
import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request

from .cli_offline import (  # the commands that need no controller
    CliError, cmd_check, cmd_flows, cmd_journal_to_etcd, cmd_state_check, cmd_state_repair, cmd_token_new,
)
from .policy import MESSAGE_SIZE, PART2_GROUNDS, PolicyError
from .version import python_version, version

DEFAULT_URL = "http://127.0.0.1:8080"


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3

# The API's field names as the CLI's flags, for its error messages.
FLAGS = {"needs_message_size": "--needs-message-size", "expires": "--expires", "contact": "--contact",
         "reason": "--reason", "direction": "--direction", "grounds": "--grounds", "address": "ADDRESS"}
TOKEN_HINT = ("give a token with --token, or set SMTP_POLICY_TOKEN (SMTP_POLICY_READ_TOKEN to read) in the"
              " environment or in ~/.config/smtp-border/env")


def size_with_unit(text):
    """--needs-message-size: a number and a unit; a bare number is refused
    (200 would be 200 bytes, never what anyone means)."""
    if text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} needs a unit: {text.strip()}MB, {text.strip()}MiB or {text.strip()}GB")
    return text


# Where the CLI finds the controller and its token, so that they need not be
# exported in the shell (and its history): KEY=VALUE lines, as systemd's
# EnvironmentFile reads them. The environment wins over the file, options
# over both.
ENV_FILE_ENV = "SMTP_BORDER_ENV_FILE"
SETTINGS = ("SMTP_BORDER_URL", "SMTP_POLICY_TOKEN", "SMTP_POLICY_READ_TOKEN")


def default_env_file(environ):
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "smtp-border", "env")


def read_env_file(path, required=False):
    """SETTINGS from a KEY=VALUE file (comments, blank lines, `export`, and
    shell quoting allowed). A file holding a token must not be open to
    everyone (as ssh insists for keys; its group may read it, as the
    service's /etc/smtp-border/env is): CliError naming the fix."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
            mode = os.fstat(stream.fileno()).st_mode
    except FileNotFoundError:
        if required:
            raise CliError(f"{path}: no such file") from None
        return {}
    except OSError as err:
        raise CliError(f"{path}: cannot read: {err.strerror}") from None
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        try:
            words = shlex.split(value, comments=True)
        except ValueError as err:
            raise CliError(f"{path}:{number}: {err}") from None
        if not sep or not key.isidentifier() or len(words) > 1:
            raise CliError(f"{path}:{number}: expected KEY=VALUE (one value; quote it if it has spaces)")
        if key in SETTINGS:
            found[key] = words[0] if words else ""
    if any("TOKEN" in key for key in found) and mode & 0o007:
        raise CliError(f"{path} holds a token and others may read it (mode {mode & 0o777:o}): chmod 600 {path}")
    return found


def settings(environ):
    """SETTINGS as the environment, then the env file, give them."""
    explicit = environ.get(ENV_FILE_ENV)
    merged = read_env_file(explicit or default_env_file(environ), required=bool(explicit))
    merged.update({k: environ[k] for k in SETTINGS if environ.get(k)})
    return merged


def main(argv=None):
    try:
        parser = build_parser(settings(os.environ))
    except CliError as err:
        print(f"smtp-border: {err}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    args.pending = False
    try:
        args.run(args)
    except (CliError, PolicyError) as err:
        print(f"smtp-border: {err}", file=sys.stderr)
        return EXIT_PENDING if args.pending else EXIT_ERROR
    except BrokenPipeError:  # `smtp-border flows ... | head`
        return EXIT_OK
    return EXIT_PENDING if args.pending else EXIT_OK


def build_parser(found=None):
    found = {} if found is None else found
    parser = argparse.ArgumentParser(
        prog="smtp-border", description=__doc__.split("\n\n")[0],
        epilog="Run `smtp-border COMMAND --help` for each command. $SMTP_BORDER_URL and the tokens may also be"
               f" set in ~/.config/smtp-border/env (or ${ENV_FILE_ENV}): KEY=VALUE lines, mode 600.",
    )
    parser.add_argument("--version", action="version", version=f"smtp-border {version()} (Python {python_version()})")
    parser.add_argument("--url", default=found.get("SMTP_BORDER_URL", DEFAULT_URL),
                        help=f"the controller's REST API (default $SMTP_BORDER_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=found.get("SMTP_POLICY_TOKEN") or found.get("SMTP_POLICY_READ_TOKEN"),
                        help="bearer token for changes and for reading who was blocked"
                             " (default $SMTP_POLICY_TOKEN, or $SMTP_POLICY_READ_TOKEN for reading)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate a policy file (exit status 0 or 1)")
    check.add_argument("--warnings", action="store_true", help="list every warning (a start or a reload says the first few)")
    check.add_argument("file")
    check.set_defaults(run=cmd_check)

    flows = commands.add_parser("flows", help="print the flows a policy compiles to, as ovs-ofctl would show them")
    flows.add_argument("file")
    flows.add_argument("--dpid", type=lambda text: int(text, 0), help="one switch (default: every listed switch)")
    flows.add_argument("--count", action="store_true",
                       help="only count each switch's flows, and the entries its budget table needs, with headroom")
    flows.add_argument("--table-size", type=int, metavar="N",
                       help="the budget of every switch, whatever the policy says (warns when one needs more)")
    flows.add_argument("--pipeline", choices=["multi_table", "single_table"],
                       help="compile every switch in this profile (default: the policy's; auto means multi_table"
                            " here, as the switch is not there to ask)")
    flows.set_defaults(run=cmd_flows)

    exceptions = commands.add_parser("exceptions", help="list, add or remove exceptions").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    listing = exceptions.add_parser("list", help="every exception, from the file and the API")
    listing.set_defaults(run=cmd_exceptions_list)
    add = exceptions.add_parser("add", help="grant an exception")
    add.add_argument("address", help="a campus host or network")
    add.add_argument("--direction", required=True, choices=["inbound", "outbound", "both"])
    add.add_argument("--reason", required=True)
    add.add_argument("--contact")
    add.add_argument("--expires", help="ISO 8601, e.g. 2027-06-30T00:00:00Z")
    add.add_argument("--grounds", choices=list(PART2_GROUNDS),
                     help="why a Part 2 (outbound) exception: the policy grants them for the message size limit")
    add.add_argument("--needs-message-size", metavar="SIZE", type=size_with_unit,
                     help="the message size the host must send, e.g. 200MB (implies --grounds message-size)")
    add.set_defaults(run=cmd_exceptions_add, flags=True)
    remove = exceptions.add_parser("rm", help="revoke an exception added over the API")
    remove.add_argument("id")
    remove.set_defaults(run=cmd_exceptions_rm)

    reload = commands.add_parser("reload", help="make the controller re-read its policy file")
    reload.set_defaults(run=cmd_reload)

    blocked = commands.add_parser("blocked", help="recent blocked SMTP attempts (sampled)")
    blocked.add_argument("--since", help="ISO 8601 time")
    blocked.add_argument("--limit", type=int, default=50)
    blocked.set_defaults(run=cmd_blocked)

    top = commands.add_parser("top", help="hosts ranked by blocked attempts")
    top.add_argument("--window", default="24h", help="how far back: seconds, or 90m, 24h, 7d (default 24h)")
    top.add_argument("--limit", type=int, default=20)
    top.set_defaults(run=cmd_top)

    migrate = commands.add_parser(
        "journal-to-etcd", help="copy the API exceptions of a journal file into etcd, for several controllers")
    migrate.add_argument("journal", help="the state file (policy.api-exceptions.json beside policy.yaml)")
    migrate.add_argument("--etcd", default=os.environ.get("SMTP_POLICY_ETCD"),
                         help="etcd endpoints, as SMTP_POLICY_ETCD (default: $SMTP_POLICY_ETCD)")
    migrate.set_defaults(run=cmd_journal_to_etcd)

    state = commands.add_parser("state", help="check or repair the journal of API exceptions").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    state_check = state.add_parser("check", help="list every problem of a journal (exit status 0 whole, 1 not)")
    state_check.add_argument("file")
    state_check.set_defaults(run=cmd_state_check)
    state_repair = state.add_parser("repair", help="keep every valid line of a journal; the rest go to a side file"
                                    " (the controller stopped; the old file is kept as a backup)")
    state_repair.add_argument("file")
    state_repair.set_defaults(run=cmd_state_repair)

    why = commands.add_parser("explain", help="why a host can or cannot send (or receive) mail: the policy, and"
                              " the deciding flow on each switch with its packet counter")
    why.add_argument("src", help="the connecting host's address (IPv4 or IPv6)")
    why.add_argument("dst", help="the address it connects to")
    why.add_argument("--port", type=int, default=25, help="the TCP port it connects to (default 25)")
    why.set_defaults(run=cmd_explain)

    history = commands.add_parser("history", help="who changed what, since a time (the controller's trail)")
    history.add_argument("--since", help="ISO 8601, e.g. 2026-12-01T00:00:00Z (default: everything kept)")
    history.add_argument("--limit", type=int, default=100, help="the newest this many changes (default 100)")
    history.set_defaults(run=cmd_history)

    token = commands.add_parser("token", help="API clients' tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    new = token.add_parser("new", help="make a token for a named client, and the line for SMTP_POLICY_TOKENS_FILE")
    new.add_argument("name", help="the client's name, as the trail will show it (e.g. alice, grafana)")
    new.add_argument("--scope", choices=["write", "read"], default="write",
                     help="write: change the policy and read everything; read: read who was blocked (default write)")
    new.set_defaults(run=cmd_token_new)

    servers = commands.add_parser("mailservers", help="the inventory: relays and every exception, why, until when")
    servers.add_argument("--soon-days", type=int, default=30, help="flag exceptions expiring within this many days")
    servers.add_argument("--expiring", action="store_true", help="list only those, soonest first")
    servers.set_defaults(run=cmd_mailservers)
    return parser


# -- against the REST API -----------------------------------------------------

def call(args, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method)
    if method != "GET":
        request.add_header("Content-Type", "application/json")
    if args.token:  # reads of who was blocked need it too
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
    except urllib.error.HTTPError as err:
        try:
            document = json.loads(err.read())
            message = document["error"]
        except (ValueError, KeyError, TypeError):
            document, message = None, err.reason
        if isinstance(document, dict) and "switches" in document:
            # Saved, not yet everywhere (the answer's "switches" says where): exit 3, not 1.
            args.pending = True
            message += "\n" + enforcement(document["switches"])
        if err.code in (401, 403):
            message += f" ({TOKEN_HINT})"
        if getattr(args, "flags", False):
            message = _as_flags(message)
        raise CliError(f"{method} {path}: {err.code}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CliError(f"cannot reach the controller at {args.url}: {reason}") from None
    document = json.loads(payload) if payload else None
    if isinstance(document, dict) and isinstance(document.get("switches"), dict) and document["switches"].get("pending"):
        args.pending = True  # 202: saved, and pending on a switch that is not connected
    return document


def _as_flags(message):
    """An API error as the CLI's user gave it: field names as flags."""
    for field, flag in FLAGS.items():
        # API-only names anywhere; plain words ("grounds", "reason") only as keys ("grounds: ...").
        after = r"(?![\w-])" if "_" in field else r"(?=:)"
        message = re.sub(rf"(?<![\w-]){field}{after}", flag, message)
    return message


def enforcement(report):
    """What a change answer says of the switches, as the operator reads it."""
    lines = [f"in force on: {', '.join(report['enforced']) or 'no switch'}"]
    for p in report["pending"]:
        name = f" ({p['name']})" if p.get("name") else ""
        lines.append(f"PENDING on {p['dpid']}{name}: {p['reason']}")
    return "\n".join(lines)


def show(args, document, render):
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        render(document)


def table(rows, headers, empty=None):
    """Rows under their headers; `empty`: what to say instead when there are none."""
    rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    if not rows and empty:
        print(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_exceptions_list(args):
    def render(document):
        table(
            [(e["id"], e["address"], e.get("direction"), e["source"], e.get("state", "active").upper()
              if e.get("state") == "quarantined" else e.get("state", "active"), e.get("expires") or "never",
              e.get("contact"), e.get("created_by") or "-", e.get("quarantine_reason") or e.get("reason"))
             for e in document["exceptions"]],
            ["ID", "ADDRESS", "DIRECTION", "SOURCE", "STATE", "EXPIRES", "CONTACT", "BY", "REASON"],
            empty="no exceptions: only the relays may send or receive mail across the border",
        )

    show(args, call(args, "GET", "/smtp/v1/exceptions"), render)


def cmd_exceptions_add(args):
    body = {"address": args.address, "direction": args.direction, "reason": args.reason}
    if args.needs_message_size:
        body.update(grounds=args.grounds or MESSAGE_SIZE, needs_message_size=args.needs_message_size)
    elif args.grounds:
        body["grounds"] = args.grounds
    if args.contact:
        body["contact"] = args.contact
    if args.expires:
        body["expires"] = args.expires
    created = call(args, "POST", "/smtp/v1/exceptions", body)
    show(args, created, lambda e: print(f"added {e['id']}: {e['address']} {e['direction']}\n{enforcement(e['switches'])}"))


def cmd_exceptions_rm(args):
    document = call(args, "DELETE", f"/smtp/v1/exceptions/{urllib.parse.quote(args.id, safe='')}")
    show(args, document, lambda d: print(f"removed {args.id}\n{enforcement(d['switches'])}"))


def cmd_reload(args):
    def render(document):
        # A grant that lapsed (or came back) is the same grant: said once, by its review line.
        changed = {e["id"] for e in document["added"]} & {e["id"] for e in document["removed"]}
        lapsing = {e["id"] for e in document["added"] + document["removed"] if e.get("lapsed")} & changed
        for e in document["added"]:
            if e["id"] not in lapsing:
                print(f"added   {e['id']}: {e['address']} {e['direction']}")
        for e in document["removed"]:
            if e["id"] not in lapsing:
                print(f"removed {e['id']}: {e['address']} {e['direction']}")
        for q in document["quarantined"]:
            print(f"QUARANTINED {q['id']}: {q['address']}: {q['quarantine_reason']}")
        for e in document.get("review", []):
            print(f"{'LAPSED' if e.get('lapsed') else 'REVIEW'} {e['id']}: {e['address']} {e['direction']}:"
                  f" {e['review']} (contact {e['contact'] or 'none given'})")
        for warning in document.get("warnings", []):
            print(f"warning: {warning}")
        hidden = document.get("warnings_count", 0) - len(document.get("warnings", []))
        if hidden > 0:
            print(f"... and {hidden} more warning(s): `smtp-border check --warnings POLICY_FILE` lists them all")
        if not (document["added"] or document["removed"]):
            print("reloaded: no exception changed")
        print(enforcement(document["switches"]))

    show(args, call(args, "POST", "/smtp/v1/reload"), render)


def since_and_limit(path, args):
    """`path` with the --limit and (if given) --since of a listing command."""
    query = {"limit": args.limit, **({"since": args.since} if args.since else {})}
    return f"{path}?{urllib.parse.urlencode(query)}"


def cmd_blocked(args):
    document = call(args, "GET", since_and_limit("/smtp/v1/blocked", args))

    def render(document):
        table(
            [(e["time"], e["direction"], f"{e['src']} :{e['src_port']}", f"{e['dst']} :{e['dst_port']}",
              e["switch"], e["in_port"]) for e in document["events"]],
            ["TIME", "DIRECTION", "SOURCE", "DESTINATION", "SWITCH", "PORT"],
            empty="no blocked attempt recorded" + (f" since {args.since}" if args.since else ""),
        )

    show(args, document, render)


def cmd_top(args):
    query = urllib.parse.urlencode({"window": args.window, "limit": args.limit})
    document = call(args, "GET", f"/smtp/v1/blocked/top?{query}")

    def render(document):
        print(f"since {document['since']} (sampled attempts; exact packet counts are in /metrics)")
        print("\ncampus hosts that tried to send mail directly (Part 2):")
        table([(r["address"], r["attempts"]) for r in document["outbound"]], ["HOST", "ATTEMPTS"], empty="none")
        print("\noutside hosts that tried to reach campus SMTP ports (Part 1):")
        table([(r["address"], r["attempts"]) for r in document["inbound"]], ["SOURCE", "ATTEMPTS"], empty="none")

    show(args, document, render)


def cmd_explain(args):
    query = urllib.parse.urlencode({"src": args.src, "dst": args.dst, "port": args.port})
    document = call(args, "GET", f"/smtp/v1/explain?{query}")

    def render(d):
        part = {"part1": "Part 1, outside to campus", "part2": "Part 2, campus to outside"}.get(d.get("part"), "")
        print(f"{d['src']} -> {d['dst']} port {d['port']}: {'ALLOWED' if d['allowed'] else 'BLOCKED'}"
              + (f" ({part})" if part else ""))
        print(f"why: {d['why']}")
        if not d["switches"]:
            print("no enforcing switch is listed or connected")
        for s in d["switches"]:
            name = f"{s['dpid']}" + (f" ({s['name']})" if s.get("name") else "")
            if not s["connected"]:
                print(f"switch {name}: not connected")
                continue
            flow = s.get("deciding_flow") or {}
            count = f"{s['packets']} packets" if "packets" in s else s.get("counter", "")
            verdict = "allows" if s["allowed"] else "blocks"
            print(f"switch {name}: {verdict}, by table {flow.get('table')} priority {flow.get('priority')}"
                  f" ({count}){'' if s['agrees_with_policy'] else '  DISAGREES WITH THE POLICY: report this'}")
            print(f"  {flow.get('ofctl')}")

    show(args, document, render)


def cmd_history(args):
    document = call(args, "GET", since_and_limit("/smtp/v1/history", args))

    def what(change):
        parts = [f"+{e['address']} {e['direction']}" for e in change["added"]]
        parts += [f"-{e['address']} {e['direction']}" for e in change["removed"]]
        hidden = change["added_count"] + change["removed_count"] - len(parts)
        return " ".join(parts + ([f"(and {hidden} more)"] if hidden > 0 else [])) or "no exception changed"

    def render(document):
        table([(c["at"], c.get("client") or "-", c.get("peer") or "-", c["action"], c.get("result") or "-",
                c.get("request") or "-", what(c)) for c in document["changes"]],
              ["TIME (UTC)", "CLIENT", "FROM", "ACTION", "RESULT", "REQUEST", "WHAT"],
              empty="no change recorded" + (f" since {args.since}" if args.since else ""))

    show(args, document, render)


def cmd_mailservers(args):
    document = call(args, "GET", f"/smtp/v1/mailservers?soon_days={args.soon_days}")
    if args.expiring:
        # Only what expires within --soon-days, soonest first: who to call before the host is cut off.
        document["exceptions"] = sorted((e for e in document["exceptions"] if e["expiring_soon"]),
                                        key=lambda e: e["expires"])

    def render(document):
        if not args.expiring:
            limit = document.get("relay_max_message_size")
            print("relays (gateways)" + (f", messages up to {limit}:" if limit else ":"))
            table([(g["name"], ", ".join(g["addresses"]), g.get("max_message_size") or "-")
                   for g in document["gateways"]], ["NAME", "ADDRESSES", "MAX MESSAGE"])
            print("\nexceptions:")
        elif not document["exceptions"]:
            print(f"no exception expires within {args.soon_days} days")
            return

        def state(e):
            if e.get("lapsed"):
                return "LAPSED"
            if not e["active"]:
                return "EXPIRED"
            if e.get("review"):
                return "REVIEW"
            return "expires soon" if e["expiring_soon"] else "active"

        def grounds(e):
            return f"{e['grounds']} {e['needs_message_size']}" if e.get("needs_message_size") else e.get("grounds") or "-"

        table(
            [(e["address"], e["direction"], state(e), e["expires"] or "never", e["contact"], grounds(e), e["reason"])
             for e in document["exceptions"]],
            ["ADDRESS", "DIRECTION", "STATE", "EXPIRES", "CONTACT", "GROUNDS", "REASON"],
            empty="no exceptions",
        )
        for e in document["exceptions"]:
            if e.get("review"):
                print(f"review {e['address']}: {e['review']}")

    show(args, document, render)


if __name__ == "__main__":
    sys.exit(main())
