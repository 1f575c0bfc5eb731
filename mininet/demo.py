#!/usr/bin/env python3
"""Play the SMTP border policy on the Mininet campus, with real mail.

Builds the campus (mininet/campus.py) with Open vSwitch, starts ryu-manager
with ryu_apps.smtp_policy and the shipped policy.yaml, and runs real SMTP
servers (aiosmtpd) on the mail hosts: the campus relay with the policy's
50 MB size limit, an outside mail server, the departmental mail system, and
an unregistered server on an ordinary host. Then:

  Part A tells the policy's story with real mail (smtplib clients): direct
  mail blocked both ways, mail through the relay delivered, the size limit
  and its exception, an exception granted and revoked over REST, and the
  blocked attempts in the audit report.
  Part B tries every clause again as plain TCP connections, IPv4 and IPv6.

Each step prints what the policy says and what happened; the summary counts
them, and the exit status is 1 if any step differs. Everything the demo
started is stopped when it ends, Ctrl-C included.

Run it as root from the repository: `make demo`, or after `make setup`:
    .venv/bin/python mininet/demo.py [--keep]
"""
import argparse
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import campus
from lab import Lab, Probe

ROOT = Path(__file__).resolve().parent.parent
OUTCOME = {"open": "allowed", "timeout": "blocked"}
OUTSIDE_MX, RELAY, DEPT = "outmx", "relay", "dept"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=str(ROOT / "policy.yaml"), help="policy file (default: the shipped policy.yaml)")
    parser.add_argument("--keep", action="store_true", help="after the steps, open the Mininet CLI; the network stays up until you exit it")
    parser.add_argument("--workdir", help="where logs and mailboxes go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    # SIGTERM (CI timeouts, kill) cleans up the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="smtp-border-demo-"))
    print("smtp-border demo: the Case ITS SMTP policy on a Mininet campus")
    print(f"  policy: {args.policy}")
    print(f"  controller log: {workdir / 'ryu-manager.log'}; mailboxes: {workdir / 'maildir'}")
    print("  starting ryu-manager, the campus (Open vSwitch, userspace datapath) and the mail servers...", flush=True)
    try:
        with Lab(args.policy, workdir, mail=True) as lab:
            results = play_mail(lab) + play_clauses(lab)
            summarise(lab, results)
            if args.keep:
                from mininet.cli import CLI

                print("\nMininet CLI: try `h1 python3 mininet/probe.py tcp 198.51.100.25 25`; `exit` ends the demo.")
                CLI(lab.net)
    except KeyboardInterrupt:
        print("\ninterrupted: network, mail servers and controller stopped", file=sys.stderr)
        return 130
    return 0 if all(ok for _, ok in results) else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@dataclass
class Mail:
    client: str
    server: str
    mail_from: str
    rcpt: str
    size: int = 0


def report(title, expected, got, ok, details=()):
    print(f"  {title}")
    print(f"      policy says: {expected}; network: {got}  {'ok' if ok else 'DIFFERS'}")
    for line in details:
        print(f"      {line}")
    return title, ok


def mail_step(lab, title, mail, expected, arrives_at=None):
    """Send one message and check its outcome (and its arrival) against `expected`."""
    subject = title.split(":")[0]
    verdict = lab.send_mail(mail.client, mail.server, mail.mail_from, mail.rcpt, subject, mail.size)
    got = {"timeout": "blocked"}.get(verdict["outcome"], verdict["outcome"])
    details = [f"{mail.client} -> {mail.server} [{lab.address(mail.server, 4)}]:25  MAIL FROM:<{mail.mail_from}> RCPT TO:<{mail.rcpt}>"
               + (f"  ({verdict['bytes'] / campus.MB:.0f} MB)" if mail.size else "")]
    if got == "refused":
        got = f"refused {verdict['code']}"
        details.append(f"server said: {verdict['code']} {verdict['detail']}")
    elif got == "blocked":
        details.append(f"no SMTP greeting: {verdict['detail']}")
    elif got == "error":
        details.append(f"error: {verdict.get('detail')}")
    ok = got.startswith(expected)
    if got == "delivered" and arrives_at:
        arrived = lab.received(arrives_at, verdict["message_id"])
        if arrived:
            message, size = arrived
            details.append(f"{arrives_at} received {message['Message-ID']} \"{message['Subject']}\" "
                           f"from {message['From']} ({size} bytes)")
        else:
            details.append(f"but it never arrived at {arrives_at}")
            ok = False
    return report(title, expected, got, ok, details)


def play_mail(lab):
    print("\nPart A. The policy with real mail (aiosmtpd servers, smtplib clients)")
    alice = "alice@h1.campus.example.edu"  # h1 is an ordinary host, with a mail server nobody registered
    bob = "bob@example.org"  # on the outside mail server
    carol = "carol@example.org"
    results = [
        mail_step(lab, "1. Part 2: an ordinary campus host mails the outside directly",
                  Mail("h1", OUTSIDE_MX, alice, bob), "blocked"),
        mail_step(lab, "2. The same host sends it through the campus relay, which relays it",
                  Mail("h1", RELAY, alice, bob), "delivered", arrives_at=OUTSIDE_MX),
        mail_step(lab, "3. Part 1: an outside sender mails an ordinary campus host directly",
                  Mail("outhost", "h1", carol, alice), "blocked"),
        mail_step(lab, "3. Part 1 exception: the outside sender mails the departmental mail system",
                  Mail("outhost", DEPT, carol, "dave@physics.example.edu"), "delivered", arrives_at=DEPT),
        mail_step(lab, "3. The relay is no open relay: the outside sender cannot relay through it",
                  Mail("outhost", RELAY, carol, bob), "refused 550"),
        mail_step(lab, "4. A 60 MB message through the relay: over its 50 MB limit (SIZE, RFC 1870)",
                  Mail("bigmail", RELAY, "erin@imaging.example.edu", bob, size=60 * campus.MB), "refused 552"),
        mail_step(lab, "4. Part 2 exception (message size): the imaging host sends it directly",
                  Mail("bigmail", OUTSIDE_MX, "erin@imaging.example.edu", bob, size=60 * campus.MB),
                  "delivered", arrives_at=OUTSIDE_MX),
    ]
    results += rest_steps(lab, alice, bob)
    results.append(audit_step(lab))
    return results


def rest_steps(lab, alice, bob):
    """5. An operator grants h1 an outbound exception over REST, then revokes it."""
    h1 = lab.address("h1", 4)
    status, created = lab.controller.api("POST", "/smtp/v1/exceptions", {
        "address": h1, "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "demo: temporary exception", "contact": "ops@example.edu",
    })
    granted = report("5. An operator grants h1 an outbound exception over REST",
                     "201 once every switch enforces it", f"{status}", status == 201,
                     [f"POST /smtp/v1/exceptions {{\"address\": \"{h1}\", \"direction\": \"outbound\", ...}} -> "
                      f"{status} id {created.get('id') if status == 201 else created}"])
    sent = mail_step(lab, "5. The next direct attempt from h1 is delivered",
                     Mail("h1", OUTSIDE_MX, alice, bob), "delivered", arrives_at=OUTSIDE_MX)
    status, _ = lab.controller.api("DELETE", f"/smtp/v1/exceptions/{created.get('id')}")
    revoked = report("5. The operator revokes it", "200 once every switch enforces it", f"{status}", status == 200,
                     [f"DELETE /smtp/v1/exceptions/{created.get('id')} -> {status}"])
    blocked = mail_step(lab, "5. h1 is blocked again", Mail("h1", OUTSIDE_MX, alice, bob), "blocked")
    return [granted, sent, revoked, blocked]


def audit_step(lab):
    """6. The blocked attempts above are in the audit report."""
    h1, outhost = lab.address("h1", 4), lab.address("outhost", 4)
    deadline = time.monotonic() + 10
    while True:
        status, top = lab.controller.api("GET", "/smtp/v1/blocked/top?window=1h")
        outbound = {r["address"]: r["attempts"] for r in top.get("outbound", [])}
        inbound = {r["address"]: r["attempts"] for r in top.get("inbound", [])}
        ok = status == 200 and outbound.get(h1, 0) >= 2 and inbound.get(outhost, 0) >= 1
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return report(
        "6. The audit report names who tried (GET /smtp/v1/blocked/top)",
        f"h1 ({h1}) among campus hosts sending directly, outhost ({outhost}) among outside senders",
        f"outbound {outbound}, inbound {inbound}", ok,
        [f"audit log: {lab.controller.audit_log}"],
    )


def play_clauses(lab):
    print("\nPart B. Every clause as plain TCP connections (each blocked one next to an allowed twin)")
    steps = []
    for family in (4, 6):
        for scenario in campus.SCENARIOS:
            source = scenario.source_address(family)
            probe = Probe(scenario.client, scenario.server, scenario.port, family, scenario.proto, src=source)
            steps.append((scenario, probe))
    outcomes = lab.run_probes([probe for _, probe in steps])

    results = []
    current_family = None
    for scenario, probe in steps:
        if probe.family != current_family:
            current_family = probe.family
            print(f" IPv{current_family}:")
        expected = "allowed" if scenario.allowed else "blocked"
        got = OUTCOME.get(outcomes[probe], outcomes[probe])
        src = probe.src or lab.address(probe.client, probe.family)
        ok = got == expected
        print(f"  {scenario.clause.strip()}")
        print(f"      {probe.client} [{src}] -> {probe.dst} [{lab.address(probe.dst, probe.family)}]"
              f" {probe.proto}/{probe.port}: policy says {expected}, network: {got}  {'ok' if ok else 'DIFFERS'}")
        results.append((f"{scenario.clause.strip()} (IPv{probe.family})", ok))
    return results


def summarise(lab, results):
    differing = [title for title, ok in results if not ok]
    errors = lab.controller.openflow_errors()
    print()
    if differing:
        print(f"{len(results)} steps, {len(differing)} differ from the policy:")
        for title in differing:
            print(f"  - {title}")
    else:
        print(f"{len(results)} steps, all as the policy says.")
    if errors:
        print(f"switches reported {len(errors)} OpenFlow error(s); see the controller log")
        results.append(("OpenFlow errors", False))


if __name__ == "__main__":
    sys.exit(main())
