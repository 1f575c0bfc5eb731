#!/usr/bin/env python3
"""Play the SMTP border policy on the Mininet campus, one connection per clause.

Builds the campus (mininet/campus.py) with Open vSwitch, starts ryu-manager
with ryu_apps.smtp_policy and the shipped policy.yaml, then tries every clause
of the policy in IPv4 and IPv6 and prints who tried to reach whom, what the
policy says should happen, and what happened. Exits 1 if anything differs.
Everything it started is stopped when it ends, Ctrl-C included.

Run it as root from the repository: `make demo`, or after `make setup`:
    .venv/bin/python mininet/demo.py [--keep]
"""
import argparse
import signal
import sys
import tempfile
from pathlib import Path

import campus
from lab import Lab, Probe

ROOT = Path(__file__).resolve().parent.parent
OUTCOME = {"open": "allowed", "timeout": "blocked"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=str(ROOT / "policy.yaml"), help="policy file (default: the shipped policy.yaml)")
    parser.add_argument("--keep", action="store_true", help="after the steps, open the Mininet CLI; the network stays up until you exit it")
    parser.add_argument("--workdir", help="where the controller log goes (default: a new temporary directory)")
    args = parser.parse_args(argv)
    # SIGTERM (CI timeouts, kill) cleans up the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="smtp-border-demo-"))
    print("smtp-border demo: the Case ITS SMTP policy on a Mininet campus")
    print(f"  policy: {args.policy}")
    print(f"  controller log: {workdir / 'ryu-manager.log'}")
    print("  starting ryu-manager and the campus (Open vSwitch, userspace datapath)...", flush=True)
    try:
        with Lab(args.policy, workdir) as lab:
            differing = play(lab)
            if args.keep:
                from mininet.cli import CLI

                print("\nMininet CLI: try `h1 python3 mininet/probe.py tcp 198.51.100.25 25`; `exit` ends the demo.")
                CLI(lab.net)
    except KeyboardInterrupt:
        print("\ninterrupted: network and controller stopped", file=sys.stderr)
        return 130
    return 1 if differing else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def play(lab):
    steps = []
    for family in (4, 6):
        for scenario in campus.SCENARIOS:
            source = campus.FORGED_SOURCE[family] if scenario.forged_source else None
            probe = Probe(scenario.client, scenario.server, scenario.port, family, scenario.proto, src=source)
            steps.append((scenario, probe))
    results = lab.run_probes([probe for _, probe in steps])

    differing = []
    current_family = None
    for scenario, probe in steps:
        if probe.family != current_family:
            current_family = probe.family
            print(f"\nIPv{current_family}:")
        expected = "allowed" if scenario.allowed else "blocked"
        got = OUTCOME.get(results[probe], results[probe])
        src = probe.src or lab.address(probe.client, probe.family)
        mark = "ok" if got == expected else "DIFFERS"
        print(f"  {scenario.clause.strip()}")
        print(
            f"      {probe.client} [{src}] -> {probe.dst} [{lab.address(probe.dst, probe.family)}]"
            f" {probe.proto}/{probe.port}: policy says {expected}, network: {got}  {mark}"
        )
        if got != expected:
            differing.append(f"{scenario.clause.strip()} (IPv{probe.family})")

    print()
    if differing:
        print(f"{len(steps)} steps, {len(differing)} differ from the policy:")
        for what in differing:
            print(f"  - {what}")
    else:
        print(f"{len(steps)} steps, all as the policy says.")
    errors = lab.controller.openflow_errors()
    if errors:
        print(f"switches reported {len(errors)} OpenFlow error(s); see the controller log")
        differing.extend(errors)
    return differing


if __name__ == "__main__":
    sys.exit(main())
