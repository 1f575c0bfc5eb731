#!/usr/bin/env python3
"""Benchmarks: how fast policies reach the switch, what they cost, against the floor
and against Ryu's own rest_firewall. Run as root after `make setup`:

    .venv/bin/python mininet/bench.py [--quick] [--only cold,...] [--json results/bench.json]

Prints one table per measurement and writes every figure to JSON.
docs/performance.md explains each figure and what limits it. --quick runs
every measurement at a small size (the test suite does that, to prove the
script works; it asserts nothing about times).
"""
import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import netaddr
import yaml

import campus
from lab import RYU_MANAGER, VENV_BIN, Controller, free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from smtp_border.compiler import compile_switch  # noqa: E402
from smtp_border.policy import load_policy  # noqa: E402
from smtp_border.rules import AUDIT_METERS, sorted_rules, to_ofctl  # noqa: E402

BRIDGE = "smtpbench"
EXCEPTION_SPACE = netaddr.IPNetwork("10.20.128.0/17")  # room for 16,384 spaced exceptions
# Beyond that, per-host IPv6 exceptions (as an IPv6 campus grants them).
EXCEPTION_SPACE_V6 = netaddr.IPNetwork("fd00:20:0:8000::/64")


# -- helpers ------------------------------------------------------------------

def run(*command, check=True, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, check=check, **kwargs)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def exception_address(i):
    """The i-th bench exception: every other IPv4 address of EXCEPTION_SPACE
    (so that none merge), then every other IPv6 address of EXCEPTION_SPACE_V6."""
    room = EXCEPTION_SPACE.size // 2
    if i < room:
        return netaddr.IPAddress(EXCEPTION_SPACE.first + 2 * i)
    return netaddr.IPAddress(EXCEPTION_SPACE_V6.first + 2 * (i - room), 6)


def policy_with(count, path, uplinks=(1,)):
    """The shipped policy plus `count` exceptions, alternately inbound and
    outbound, none adjacent, so that none merge."""
    document = yaml.safe_load((ROOT / "policy.yaml").read_text())
    document["exceptions"] += [
        {"address": str(exception_address(i)), "direction": "inbound" if i % 2 else "outbound", "reason": "bench"}
        for i in range(count)
    ]
    document["switches"] = [{"dpid": 1, "name": "bench", "uplinks": list(uplinks)}]
    path.write_text(yaml.safe_dump(document))
    return path


class Bridge:
    """A bare userspace OVS bridge (dpid 1), with no hosts: enough to install flows."""

    def __init__(self, name=BRIDGE):
        self.name = name

    def __enter__(self):
        run("ovs-vsctl", "--if-exists", "del-br", self.name)
        run("ovs-vsctl", "add-br", self.name, "--", "set", "bridge", self.name, "datapath_type=netdev",
            "protocols=OpenFlow13", "fail_mode=secure", "other-config:datapath-id=0000000000000001")
        return self

    def __exit__(self, *exc):
        run("ovs-vsctl", "--if-exists", "del-br", self.name, check=False)

    def connect(self, port):
        run("ovs-vsctl", "set-controller", self.name, f"tcp:127.0.0.1:{port}")

    def disconnect(self):
        run("ovs-vsctl", "del-controller", self.name)

    def clear(self):
        """No flows, no meters: a switch as it comes out of the box."""
        run("ovs-ofctl", "-O", "OpenFlow13", "del-flows", self.name)
        run("ovs-ofctl", "-O", "OpenFlow13", "del-meters", self.name, check=False)

    def flow_count(self):
        return bridge_flows(self.name)


INSTALL_LINE = re.compile(
    r"flows installed in one bundle, confirmed by barrier \(([0-9.]+) ms, ([0-9.]+) ms after its hello"
    r"(?:; before the first flow: ([^)]*))?\)")


def installed_ms(controller, count):
    """The app's own figures for its install number `count`: (compile, bundle
    and barrier; the same from the switch's hello)."""
    app, since_hello, _ = INSTALL_LINE.findall(controller.log())[count - 1]
    return float(app), float(since_hello)


def connection_steps_ms(controller, count):
    """What install number `count` cost before its first flow, as the app
    logs it: {probe, config, meters, count, role: ms} (the steps it took)."""
    steps = INSTALL_LINE.findall(controller.log())[count - 1][2]
    return {name: float(ms) for name, ms in re.findall(r"(\w+) ([0-9.]+) ms", steps)}


# The switch's side of an install: Open vSwitch's log and its own flow clock.
OVS_LOG = Path("/var/log/openvswitch/ovs-vswitchd.log")
MARKER_TABLE = 250  # a table the policy never uses, for the clock marker


def ovs_log_mark():
    """Where ovs-vswitchd.log ends now: connected_at reads after it."""
    return OVS_LOG.stat().st_size if OVS_LOG.exists() else 0


def connected_at(bridge, port, mark):
    """Unix time of the bridge's `connected` line for the controller on
    `port` in ovs-vswitchd.log, written after `mark` (millisecond stamps, UTC)."""
    with open(OVS_LOG, "rb") as log:
        log.seek(mark)
        text = log.read().decode(errors="replace")
    for line in text.splitlines():
        if f"|{bridge}<->tcp:127.0.0.1:{port}: connected" in line:
            stamp = datetime.datetime.strptime(line.split("|", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
            return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    raise AssertionError(f"no `connected` line for {bridge} to port {port} in {OVS_LOG}")


def last_flow_at(bridge, expected):
    """Unix time at which the newest of the bridge's flows was installed, by
    Open vSwitch's own clock: each flow's `duration` counts from its creation,
    and a marker flow added at a known time (when `ovs-ofctl add-flow`
    returns) ties that clock to ours, to within a few ms. Checks that the bridge
    holds `expected` flows besides the marker."""
    cookie = "0x5e7c10c4"
    run("ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge, f"table={MARKER_TABLE},priority=0,cookie={cookie},actions=drop")
    # ovs-ofctl exits right after the switch confirms the flow: its exit is
    # the latest the marker can have been made, so the figure errs long.
    marker_at = time.time()
    dump = run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge).stdout
    run("ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge, f"table={MARKER_TABLE},cookie={cookie}/-1")
    marker, durations = None, []
    for line in dump.splitlines():
        found = re.search(r"duration=([0-9.]+)s", line)
        if not found:
            continue
        if f"cookie={cookie}" in line:
            marker = float(found.group(1))
        else:
            durations.append(float(found.group(1)))
    assert marker is not None and len(durations) == expected, (marker, len(durations), expected)
    return marker_at + marker - min(durations)


def median_steps(steps):
    """{step: median ms} over installs (a step an install did not take counts 0)."""
    names = sorted({name for one in steps for name in one})
    return {name: round(statistics.median(one.get(name, 0.0) for one in steps), 1) for name in names}


def connect_to_last_flow_ms(bridge, port, mark, expected):
    """ms from the switch's `connected` line to its newest flow: the install
    as the switch saw it, handshake and all."""
    return (last_flow_at(bridge, expected) - connected_at(bridge, port, mark)) * 1000


# -- 1. full install against the ovs-ofctl --bundle floor --------------------

def policy_and_flows(size, workdir, name):
    """A bench policy of `size` exceptions, and its flows for dpid 1 in a
    file that `ovs-ofctl add-flows` reads: (policy path, flows, flow file)."""
    policy = policy_with(size, workdir / f"{name}-{size}.yaml")
    flows = [to_ofctl(r) for r in sorted_rules(compile_switch(load_policy(policy), 1))]
    flow_file = workdir / f"{name}-flows-{size}.txt"
    flow_file.write_text("\n".join(flows) + "\n")
    return policy, flows, flow_file


def floor_ms(bridge, flow_file, repeats):
    """The floor: the same flows onto the bare bridge with `ovs-ofctl --bundle
    add-flows`, meters first as the controller makes them; ms of each run."""
    floors = []
    for _ in range(repeats):
        bridge.clear()
        for meter in AUDIT_METERS:
            run("ovs-ofctl", "-O", "OpenFlow13", "add-meter", bridge.name,
                f"meter={meter},pktps,burst,band=type=drop,rate=10,burst_size=10")
        started = time.monotonic()
        run("ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", bridge.name, str(flow_file))
        floors.append((time.monotonic() - started) * 1000)
    return floors


def bench_full_install(sizes, workdir, repeats=5, bin_dir=VENV_BIN):
    """Median of `repeats` installs onto an empty bridge, each on a new
    connection, against the median of as many `ovs-ofctl --bundle` runs.
    `bin_dir`: the virtualenv whose controller is measured (section 10)."""
    rows = []
    for size in sizes:
        policy, flows, flow_file = policy_and_flows(size, workdir, "policy")
        walls, apps, since_hellos, switch_side, steps = [], [], [], [], []
        with Bridge() as bridge:
            controller = Controller(policy, workdir / f"install-{size}.txt", state_file=workdir / f"state-{size}.json",
                                    audit_seconds=None, bin_dir=bin_dir).start()
            try:
                for attempt in range(1, repeats + 1):
                    bridge.clear()
                    mark = ovs_log_mark()
                    started = time.monotonic()
                    bridge.connect(controller.of_port)
                    controller.wait_installs({1: attempt}, timeout=300)
                    walls.append((time.monotonic() - started) * 1000)
                    app, since_hello = installed_ms(controller, attempt)
                    apps.append(app)
                    since_hellos.append(since_hello)
                    switch_side.append(connect_to_last_flow_ms(bridge.name, controller.of_port, mark, len(flows)))
                    steps.append(connection_steps_ms(controller, attempt))
                    assert bridge.flow_count() == len(flows)
                    bridge.disconnect()
            finally:
                controller.stop()
            floors = floor_ms(bridge, flow_file, repeats)
            assert bridge.flow_count() == len(flows)
        median = statistics.median
        rows.append({"exceptions": size, "flows": len(flows), "set_controller_to_barrier_ms": round(median(walls), 1),
                     "hello_to_barrier_ms": round(median(since_hellos), 1), "app_compile_bundle_barrier_ms": round(median(apps), 1),
                     "connected_to_last_flow_ms": round(median(switch_side), 1),
                     "ovs_ofctl_bundle_ms": round(median(floors), 1), "ratio": round(median(since_hellos) / median(floors), 2),
                     "switch_side_ratio": round(median(switch_side) / median(floors), 2),
                     "before_first_flow_ms": median_steps(steps),
                     "connected_to_last_flow_all_ms": [round(v, 1) for v in switch_side],
                     "hello_to_barrier_all_ms": [round(v, 1) for v in since_hellos], "ovs_ofctl_bundle_all_ms": [round(v, 1) for v in floors]})
    return rows


# -- 2. one change, REST request to confirmed answer --------------------------

def bench_one_change(sizes, changes, workdir, bin_dir=VENV_BIN):
    rows = []
    for size in sizes:
        policy = policy_with(size, workdir / f"change-{size}.yaml")
        with Bridge() as bridge:
            controller = Controller(policy, workdir / f"change-{size}.txt", state_file=workdir / f"change-{size}.json",
                                    audit_seconds=None, bin_dir=bin_dir).start()
            try:
                bridge.connect(controller.of_port)
                controller.wait_installs({1: 1}, timeout=300)
                add, delete = [], []
                for i in range(changes):
                    body = {"address": f"10.20.100.{i % 250 + 1}", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "bench"}
                    started = time.monotonic()
                    status, created = controller.api("POST", "/smtp/v1/exceptions", body)
                    add.append((time.monotonic() - started) * 1000)
                    assert status == 201, created
                    started = time.monotonic()
                    status, _ = controller.api("DELETE", f"/smtp/v1/exceptions/{created['id']}")
                    delete.append((time.monotonic() - started) * 1000)
                    assert status == 200
            finally:
                controller.stop()
        rows.append({"exceptions": size, "changes": changes,
                     "add_p50_ms": round(statistics.median(add), 1), "add_p99_ms": round(percentile(add, 0.99), 1),
                     "delete_p50_ms": round(statistics.median(delete), 1), "delete_p99_ms": round(percentile(delete, 0.99), 1)})
    return rows


# -- 3. against ryu.app.rest_firewall ------------------------------------------

def rest_call(port, method, path, body=None):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(method, path, body=None if body is None else json.dumps(body),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def bench_rest_firewall(count, workdir):
    """The same allow rules, one REST request each: smtp-border exceptions
    (each answered after the barrier) against rest_firewall rules, until the
    last one is on the switch."""
    addresses = [str(exception_address(i)) for i in range(count)]
    results = {}
    policy = policy_with(0, workdir / "firewall-ours.yaml")
    with Bridge() as bridge:
        controller = Controller(policy, workdir / "firewall-ours.txt", state_file=workdir / "firewall-ours.json", audit_seconds=None).start()
        try:
            bridge.connect(controller.of_port)
            controller.wait_installs({1: 1})
            before = bridge.flow_count()
            started = time.monotonic()
            for address in addresses:
                status, _ = controller.api("POST", "/smtp/v1/exceptions",
                                           {"address": address, "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "bench"})
                assert status == 201
            results["smtp_border_s"] = time.monotonic() - started
            assert bridge.flow_count() == before + count
            # The floor of one request each: as many reads that do nothing, on the same Ryu web server.
            started = time.monotonic()
            for _ in addresses:
                assert controller.api("GET", "/smtp/v1/exceptions/000000000000")[0] == 404
            results["http_request_floor_s"] = time.monotonic() - started
            # The same rules again, as one batch request (one bundle, one barrier, one
            # record); the median of three.
            batch = [{"address": address, "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "bench"} for address in addresses]
            batches = []
            for _ in range(3):
                ids = [e["id"] for e in controller.api("GET", "/smtp/v1/exceptions")[1]["exceptions"] if e["source"] == "api"]
                assert controller.api("POST", "/smtp/v1/exceptions/batch", {"remove": ids})[0] == 200
                assert bridge.flow_count() == before
                started = time.monotonic()
                status, answer = controller.api("POST", "/smtp/v1/exceptions/batch", {"add": batch})
                batches.append(time.monotonic() - started)
                assert status == 200, answer
                assert bridge.flow_count() == before + count
            results["smtp_border_batch_s"] = statistics.median(batches)
            results["smtp_border_batch_all_s"] = [round(b, 3) for b in batches]
        finally:
            controller.stop()

    with Bridge() as bridge:
        of_port, api_port = free_port(), free_port()
        log = open(workdir / "rest_firewall.txt", "wb")
        firewall = subprocess.Popen(
            [str(RYU_MANAGER), "--ofp-tcp-listen-port", str(of_port), "--wsapi-host", "127.0.0.1",
             "--wsapi-port", str(api_port), "ryu.app.rest_firewall"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    rest_call(api_port, "GET", "/firewall/module/status")  # 400 until a switch connects
                    break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("rest_firewall did not start")
                time.sleep(0.2)
            bridge.connect(of_port)
            deadline = time.monotonic() + 30
            while b"0000000000000001" not in rest_call(api_port, "GET", "/firewall/module/status")[1]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the switch did not connect to rest_firewall")
                time.sleep(0.2)
            rest_call(api_port, "PUT", "/firewall/module/enable/0000000000000001")
            time.sleep(1)
            before = bridge.flow_count()
            started = time.monotonic()
            for address in addresses:
                status, data = rest_call(api_port, "POST", "/firewall/rules/0000000000000001", {
                    "nw_src": f"{address}/32", "nw_proto": "TCP", "tp_dst": "25", "dl_type": "IPv4", "actions": "ALLOW",
                })
                assert status == 200, data
            # rest_firewall answers before the switch has the flow: wait until it has them all.
            deadline = time.monotonic() + 300
            while bridge.flow_count() < before + count and time.monotonic() < deadline:
                time.sleep(0.01)
            results["rest_firewall_s"] = time.monotonic() - started
            results["rest_firewall_flows_added"] = bridge.flow_count() - before
        finally:
            os.killpg(firewall.pid, signal.SIGTERM)
            firewall.wait(timeout=10)
            log.close()
    results["rules"] = count
    # How many times faster smtp-border enforces the same rules (below 1: slower).
    results["speedup_one_by_one"] = round(results["rest_firewall_s"] / results["smtp_border_s"], 2)
    results["speedup_batch"] = round(results["rest_firewall_s"] / results["smtp_border_batch_s"], 2)
    for key in ("smtp_border_s", "smtp_border_batch_s", "rest_firewall_s", "http_request_floor_s"):
        results[key] = round(results[key], 3)
    return results


# -- 4 and 5. data-plane cost and controller cost, in Mininet ------------------

def process_usage(pid, seconds):
    """Resident memory (MiB) and CPU share (% of one core) of a process over `seconds`."""
    def cpu():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    ticks = os.sysconf("SC_CLK_TCK")
    start = cpu()
    time.sleep(seconds)
    used = (cpu() - start) / ticks / seconds * 100
    rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
    return round(rss, 1), round(used, 1)


def bench_data_plane(size, seconds, workdir, rounds=5, controller_seconds=None):
    """Throughput and connection rate through one switch, alternating between
    only a NORMAL flow and a `size`-exception policy, `rounds` times each in
    the order ABBA..., so that drift on a busy machine hits both alike: the
    ratios are medians of per-round ratios. Open vSwitch's datapath counters
    say how each mode's packets were handled. Then the controller's cost,
    idle and under a flood."""
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.node import OVSSwitch, RemoteController
    from mininet.topo import Topo

    class Pair(Topo):
        def build(self):
            switch = self.addSwitch("s1", dpid="0000000000000001")
            inside = self.addHost("h1", cls=campus.CampusHost, ip="10.20.3.10/8", ip6=None)
            outside = self.addHost("h9", cls=campus.CampusHost, ip="198.51.100.25/8", ip6=None)
            self.addLink(outside, switch, port2=1)  # port 1: the uplink
            self.addLink(inside, switch, port2=2)

    setLogLevel("error")
    # The controller's windows span its periodic work (the 10 s expiry check).
    controller_seconds = controller_seconds or seconds
    results = {"exceptions": size, "seconds": seconds, "rounds": rounds, "controller_seconds": controller_seconds}
    policy = policy_with(size, workdir / "dataplane.yaml")
    controller = Controller(policy, workdir / "dataplane.txt", state_file=workdir / "dataplane.json", audit_seconds=None).start()
    started = []  # processes in the hosts, killed whatever happens
    net = None
    installs, current = 0, "policy"

    def enforce(mode):
        nonlocal installs, current
        if current == mode:
            return
        current = mode
        if mode == "policy":
            run("ovs-vsctl", "set-controller", "s1", f"tcp:127.0.0.1:{controller.of_port}")
            installs += 1
            controller.wait_installs({1: installs}, timeout=300)
        else:
            # Away from the controller, a fail-secure switch keeps its flows: replace them.
            run("ovs-vsctl", "del-controller", "s1")
            run("ovs-ofctl", "-O", "OpenFlow13", "del-flows", "s1")
            run("ovs-ofctl", "-O", "OpenFlow13", "add-flow", "s1", "actions=NORMAL")
        assert (bridge_flows("s1") > size) == (mode == "policy")

    try:
        net = Mininet(topo=Pair(), switch=partial(OVSSwitch, datapath="user", protocols="OpenFlow13", failMode="secure"),
                      controller=partial(RemoteController, ip="127.0.0.1", port=controller.of_port),
                      build=False, waitConnected=False)
        net.build()
        net.start()
        installs += 1
        controller.wait_installs({1: installs}, timeout=300)
        h1, h9 = net.get("h1"), net.get("h9")
        started.append(h9.popen(["iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        started.append(h9.popen(["python3", str(Path(__file__).parent / "probe.py"), "listen", "--tcp", "2525"]))
        script = workdir / "connect_rate.py"
        # Closed with a reset (linger 0): ten runs of thousands of connections
        # a second would otherwise use up the ephemeral ports in TIME_WAIT.
        script.write_text(
            "import socket, struct, sys, time\n"
            "end, n = time.time() + float(sys.argv[1]), 0\n"
            "while time.time() < end:\n"
            "    s = socket.create_connection(('198.51.100.25', 2525), timeout=2)\n"
            "    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
            "    s.close()\n"
            "    n += 1\n"
            "print(n / float(sys.argv[1]))\n"
        )
        time.sleep(1)
        figures = {"normal_only": {"gbit_s": [], "connections_s": []}, "policy": {"gbit_s": [], "connections_s": []}}
        datapath = {"normal_only": [], "policy": []}  # what Open vSwitch's datapath did per iperf3 run
        for round_number in range(rounds):
            order = ("normal_only", "policy") if round_number % 2 == 0 else ("policy", "normal_only")
            for mode in order:
                enforce(mode)
                run("ovs-appctl", "dpif-netdev/pmd-stats-clear")
                out = h1.cmd(f"iperf3 -c 198.51.100.25 -p 5201 -t {seconds} -J")
                datapath[mode].append(datapath_stats())
                report = json.loads(out[out.index("{"):])
                figures[mode]["gbit_s"].append(round(report["end"]["sum_received"]["bits_per_second"] / 1e9, 3))
                rate = h1.cmd(f"python3 {script} {seconds}")
                figures[mode]["connections_s"].append(round(float(rate.strip().splitlines()[-1]), 1))
        for mode, by_measure in figures.items():
            for measure, values in by_measure.items():
                results[f"{mode}_{measure}"] = statistics.median(values)
                results[f"{mode}_{measure}_all"] = values
        # Work per packet in the datapath, a figure that does not depend on
        # how busy the machine is: the share of packets served from the flow
        # caches without the slow path, and classifier subtables searched.
        for mode, runs in datapath.items():
            packets = sum(r["packets received"] for r in runs)
            cached = sum(r["emc hits"] + r["smc hits"] + r["simple match hits"] + r["megaflow hits"] for r in runs)
            upcalls = sum(r["miss with success upcall"] + r["miss with failed upcall"] for r in runs)
            hits = sum(r["megaflow hits"] for r in runs)
            lookups = sum(r["megaflow hits"] * r["avg. subtable lookups per megaflow hit"] for r in runs)
            results[f"{mode}_datapath_packets"] = packets
            results[f"{mode}_cache_hit_pct"] = round(100 * cached / packets, 3) if packets else None
            results[f"{mode}_upcalls"] = upcalls
            results[f"{mode}_subtable_lookups_per_megaflow_hit"] = round(lookups / hits, 2) if hits else None
        # Each round's two measurements are neighbours in time, so their ratio
        # cancels most of the machine's drift; the figure is the median ratio.
        for measure, name in (("gbit_s", "throughput_ratio"), ("connections_s", "connection_rate_ratio")):
            by_round = [round(p / n, 3) for p, n in zip(figures["policy"][measure], figures["normal_only"][measure])]
            results[f"{name}_by_round"] = by_round
            results[name] = statistics.median(by_round)

        enforce("policy")
        pid = controller.process.pid
        results["controller_idle_rss_mib"], results["controller_idle_cpu_pct"] = process_usage(pid, controller_seconds)
        flood = h1.popen(["hping3", "-q", "-S", "-p", "25", "-c", str(int(controller_seconds * 20000)), "-i", "u50",
                          "198.51.100.25"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(flood)
        results["controller_flood_rss_mib"], results["controller_flood_cpu_pct"] = process_usage(pid, controller_seconds)
        flood.wait(timeout=120)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
        if net is not None:
            net.stop()
        controller.stop()
    return results


def datapath_stats():
    """The userspace datapath's counters (main thread, all bridges: only the benchmark's carries traffic)."""
    stats = {}
    for line in run("ovs-appctl", "dpif-netdev/pmd-stats-show").stdout.splitlines():
        name, colon, value = line.strip().partition(":")
        if colon and value.strip():
            try:
                stats[name] = float(value)
            except ValueError:
                pass
    return stats


def bridge_flows(bridge):
    dump = run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge).stdout
    return sum(1 for line in dump.splitlines() if "cookie=" in line)  # long dumps come in several replies


# -- 7. convergence: reconnection, audits, repair -----------------------------

def bench_convergence(size, workdir, samples=5):
    """What keeping a switch converged costs at `size` exceptions: a
    reconnection of a switch that already holds the policy (read, diff,
    nothing sent), the periodic audit (flow counts of the owned tables), the
    full comparison (every flow read back and compared), and the repair after
    `ovs-ofctl del-flows` (from the deletion to every flow back)."""
    policy = policy_with(size, workdir / f"converge-{size}.yaml")
    expected = len(compile_switch(load_policy(policy), 1))
    with Bridge() as bridge:
        controller = Controller(policy, workdir / f"converge-{size}.txt", state_file=workdir / f"converge-{size}.json",
                                audit_seconds=1.0, env={"SMTP_POLICY_VERIFY_SECONDS": "0"}).start()
        try:
            bridge.connect(controller.of_port)
            controller.wait_installs({1: 1}, timeout=300)
            reconnects = []
            for attempt in range(2, samples + 2):
                # Cut off by a dead target, not del-controller (which makes OVS flush the flows).
                bridge.connect(free_port())
                bridge.connect(controller.of_port)
                controller.wait_installs({1: attempt}, timeout=300)
                found = re.findall(r"flows installed already, nothing sent \(([0-9.]+) ms, ([0-9.]+) ms after its hello",
                                   controller.log())
                reconnects.append(float(found[-1][1]))
            audits, fulls = [], []
            deadline = time.monotonic() + samples * 1.5 + 5
            while len(audits) < samples and time.monotonic() < deadline:
                time.sleep(1.1)
                status = controller.api("GET", "/smtp/v1/switches")[1]["switches"][0]
                if status["audit_ms"] is not None:
                    audits.append(status["audit_ms"])
            for _ in range(samples):
                status = controller.api("GET", "/smtp/v1/switches?verify=1")[1]["switches"][0]
                fulls.append(status["full_audit_ms"])
            switches_ms = switches_latency_under_changes(controller, 40 if size < 10000 else 100)
            repairs = []
            for _ in range(3 if size >= 10000 else samples):
                run("ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge.name)
                started = time.monotonic()
                while bridge.flow_count() != expected and time.monotonic() - started < 60:
                    time.sleep(0.05)
                repairs.append((time.monotonic() - started) * 1000)
        finally:
            controller.stop()
    median = statistics.median
    return {"exceptions": size, "flows": expected, "reconnect_in_sync_ms": round(median(reconnects), 1),
            "switches_get_p50_ms": round(median(switches_ms), 2), "switches_get_p99_ms": round(percentile(switches_ms, 0.99), 2),
            "audit_counts_ms": round(median(audits), 2) if audits else None,
            "audit_full_ms": round(median(fulls), 1), "del_flows_repaired_ms": round(median(repairs), 1),
            "reconnect_in_sync_all_ms": reconnects, "audit_counts_all_ms": audits, "audit_full_all_ms": fulls,
            "del_flows_repaired_all_ms": [round(v, 1) for v in repairs],
            "switches_get_all_ms": [round(v, 2) for v in switches_ms]}


# -- 8. cold paths: start-up, first install, reload, check ---------------------

def api_answering_s(controller, started, timeout=120):
    """Seconds from `started` until the REST API answers a request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if controller.api("GET", "/smtp/v1/switches", timeout=2)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError("the API did not answer")


def process_rss_mib(pid):
    with open(f"/proc/{pid}/status") as stream:
        kib = next(int(line.split()[1]) for line in stream if line.startswith("VmRSS:"))
    return round(kib / 1024, 1)


def bench_cold(sizes, workdir, repeats=3):
    """What an operator meets after a restart or a big edit, at `size`
    exceptions: `smtp-border check` of the file; ryu-manager start to the
    API answering; the first install after that fresh start (from the
    switch's hello, which comes with its connection, to the barrier) beside
    the following installs and the ovs-ofctl --bundle floor; a POST /reload
    after changing one line of the file (one exception's direction), from
    the request to the barrier-confirmed answer; the controller's memory."""
    rows = []
    for size in sizes:
        policy, flows, flow_file = policy_and_flows(size, workdir, "cold")
        checks = []
        for _ in range(repeats):
            started = time.monotonic()
            run(str(VENV_BIN / "smtp-border"), "check", str(policy))
            checks.append(time.monotonic() - started)
        with Bridge() as bridge:
            controller = Controller(policy, workdir / f"cold-{size}.txt", state_file=workdir / f"cold-{size}.json",
                                    audit_seconds=None, env={"SMTP_POLICY_CHANGE_DEADLINE": "60"})
            started = time.monotonic()
            controller.start()
            try:
                start_s = api_answering_s(controller, started)
                installs, switch_side, steps = [], [], []
                for attempt in range(1, repeats + 2):
                    bridge.clear()
                    mark = ovs_log_mark()
                    bridge.connect(controller.of_port)
                    controller.wait_installs({1: attempt}, timeout=300)
                    installs.append(installed_ms(controller, attempt)[1])
                    switch_side.append(connect_to_last_flow_ms(bridge.name, controller.of_port, mark, len(flows)))
                    steps.append(connection_steps_ms(controller, attempt))
                    assert bridge.flow_count() == len(flows)
                    if attempt <= repeats:
                        bridge.disconnect()
                rss = process_rss_mib(controller.process.pid)
                # The switch: Open vSwitch's memory holding the flows (the whole daemon).
                switch_rss = process_rss_mib(int(run("pidof", "ovs-vswitchd").stdout.split()[0]))
                reloads, text = [], policy.read_text()
                for n in range(repeats):
                    # One line: the last bench exception's direction, back and forth.
                    last = text.rindex("direction: ")
                    end = text.index("\n", last)
                    now = text[last:end]
                    text = text[:last] + ("direction: both" if now != "direction: both" else "direction: inbound") + text[end:]
                    policy.write_text(text)
                    started = time.monotonic()
                    status, body = controller.api("POST", "/smtp/v1/reload")
                    reloads.append((time.monotonic() - started) * 1000)
                    assert status == 200 and body["switches"]["enforced"] == ["0000000000000001"], (status, body)
            finally:
                controller.stop()
            floors = floor_ms(bridge, flow_file, repeats)
        median = statistics.median
        floor = median(floors)
        rows.append({
            "exceptions": size, "flows": len(flows), "check_s": round(min(checks), 2), "start_to_api_s": round(start_s, 2),
            "first_install_ms": round(installs[0], 1), "following_installs_ms": round(median(installs[1:]), 1),
            "first_connected_to_last_flow_ms": round(switch_side[0], 1),
            "following_connected_to_last_flow_ms": round(median(switch_side[1:]), 1),
            "ovs_ofctl_bundle_ms": round(floor, 1), "first_to_floor": round(installs[0] / floor, 2),
            "first_switch_side_to_floor": round(switch_side[0] / floor, 2),
            "first_before_first_flow_ms": steps[0], "following_before_first_flow_ms": median_steps(steps[1:]),
            "connected_to_last_flow_all_ms": [round(v, 1) for v in switch_side],
            "reload_one_line_ms": round(median(reloads), 1), "controller_rss_mib": rss, "ovs_vswitchd_rss_mib": switch_rss,
            "installs_all_ms": installs, "reloads_all_ms": [round(v, 1) for v in reloads],
            "floors_all_ms": [round(v, 1) for v in floors], "checks_all_s": [round(v, 2) for v in checks],
        })
    return rows


class Fleet:
    """`count` bare userspace bridges, dpids 1..count, no hosts: a campus's
    edge switches as far as the controller can tell. Made and removed in one
    ovs-vsctl transaction each."""

    def __init__(self, count):
        self.names = [f"smtpfleet{i}" for i in range(1, count + 1)]

    def __enter__(self):
        self.__exit__()
        command = ["ovs-vsctl"]
        for dpid, name in enumerate(self.names, start=1):
            command += ["--", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev",
                        "protocols=OpenFlow13", "fail_mode=secure", f"other-config:datapath-id={dpid:016x}"]
        run(*command)
        return self

    def __exit__(self, *exc):
        command = ["ovs-vsctl"]
        for name in self.names:
            command += ["--", "--if-exists", "del-br", name]
        run(*command, check=False)

    def connect(self, targets_of):
        """Every bridge to its controllers at once: targets_of(index) -> ports."""
        command = ["ovs-vsctl"]
        for index, name in enumerate(self.names):
            command += ["--", "set-controller", name, *(f"tcp:127.0.0.1:{port}" for port in targets_of(index))]
        run(*command)


def fleet_policy(switches, exceptions, path):
    document = yaml.safe_load(policy_with(exceptions, path).read_text())
    document["switches"] = [{"dpid": i, "name": f"edge{i}", "uplinks": [1]} for i in range(1, switches + 1)]
    path.write_text(yaml.safe_dump(document))
    return path


def cpu_seconds(pid):
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_sync_count(controllers):
    """Switches in sync on the controller that writes them (its master, or the only one)."""
    count = 0
    for controller in controllers:
        for status in controller.api("GET", "/smtp/v1/switches", timeout=10)[1]["switches"]:
            count += bool(status["in_sync"]) and status.get("openflow_role") in (None, "master")
    return count


def wait_in_sync(controllers, size, timeout=600):
    deadline = time.monotonic() + timeout
    while in_sync_count(controllers) < size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{size} switches not in sync within {timeout} s")
        time.sleep(0.05)


def bench_fleet(sizes, exceptions, changes, workdir, replicas=1):
    """A campus of `size` edge switches and `exceptions` exceptions: from
    every switch connecting at once until every one enforces; then one
    change (an exception added, then removed) fanned out to all, request to
    answer; the controllers' CPU and memory. With two replicas (etcd) they
    share the switches: each is first the only controller of half of them
    (so each masters half), then both are targets of every switch."""
    sys.path.insert(0, str(ROOT / "tests"))
    from etcdcluster import EtcdCluster

    rows = []
    for size in sizes:
        policy = fleet_policy(size, exceptions, workdir / f"fleet-{size}-{replicas}.yaml")
        with contextlib.ExitStack() as stack:
            env = {}
            if replicas > 1:
                directory = workdir / f"etcd-{size}"
                directory.mkdir()
                cluster = stack.enter_context(EtcdCluster(directory))
                env = {"SMTP_POLICY_ETCD": cluster.endpoints}
            fleet = stack.enter_context(Fleet(size))
            controllers = []
            for n in range(replicas):
                controller = Controller(policy, workdir / f"fleet-{size}-{replicas}-{n}.txt",
                                        state_file=workdir / f"fleet-{size}-{replicas}-{n}.json", audit_seconds=None,
                                        env=dict(env, SMTP_POLICY_REPLICA=f"r{n}") if env else None)
                controllers.append(controller.start())
                stack.callback(controller.stop)
            for controller in controllers:
                api_answering_s(controller, time.monotonic())
            cpu_before = sum(cpu_seconds(c.process.pid) for c in controllers)
            started = time.monotonic()
            fleet.connect(lambda index: [controllers[index % replicas].of_port])
            wait_in_sync(controllers, size)
            converge_s = time.monotonic() - started
            cpu_converge = sum(cpu_seconds(c.process.pid) for c in controllers) - cpu_before
            if replicas > 1:
                # Then every switch to both (Open vSwitch reconnects each): masters settle again, in sync.
                fleet.connect(lambda index: [c.of_port for c in controllers])
                time.sleep(1)
                wait_in_sync(controllers, size)
            latencies, answers, confirmed = [], [], []
            cpu_before = sum(cpu_seconds(c.process.pid) for c in controllers)
            change_started = time.monotonic()
            for n in range(changes):
                controller = controllers[n % replicas]
                address = str(exception_address(exceptions + n))
                path, body = "/smtp/v1/exceptions", {"address": address, "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "fleet bench"}
                for method in ("POST", "DELETE"):
                    t0 = time.monotonic()
                    status, answer = controller.api(method, path, body)
                    latencies.append((time.monotonic() - t0) * 1000)
                    path, body = f"/smtp/v1/exceptions/{answer.get('id')}", None  # then remove it
                    answers.append(status)
                    confirmed.append(len(answer["switches"]["enforced"]))
                    # One controller confirms every switch itself; with two, a
                    # slave reads its master's switches (docs/ha.md).
                    assert status in (200, 201) or replicas > 1, (status, answer["switches"])
            change_cpu = sum(cpu_seconds(c.process.pid) for c in controllers) - cpu_before
            change_wall = time.monotonic() - change_started
            rss = [process_rss_mib(c.process.pid) for c in controllers]
        rows.append({
            "switches": size, "exceptions": exceptions, "replicas": replicas,
            "flows_per_switch": len(compile_switch(load_policy(policy), 1)),
            "all_in_sync_s": round(converge_s, 2), "cpu_s_to_converge": round(cpu_converge, 2),
            "change_p50_ms": round(percentile(latencies, 0.5), 1), "change_p99_ms": round(percentile(latencies, 0.99), 1),
            "change_cpu_share": round(change_cpu / change_wall, 2), "controller_rss_mib": rss,
            "answers_confirmed_by_all": sum(c == size for c in confirmed), "answers": len(answers),
            "answer_codes": sorted(set(answers)),
            "changes_all_ms": [round(v, 1) for v in latencies],
        })
    return rows


def switches_latency_under_changes(controller, pairs):
    """GET /smtp/v1/switches, one after another, while another client adds and
    removes an exception `pairs` times: the read must not wait for changes."""
    import threading

    def churn():
        for i in range(pairs):
            body = {"address": f"10.20.100.{i % 250 + 1}", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "bench"}
            status, created = controller.api("POST", "/smtp/v1/exceptions", body)
            controller.api("DELETE", f"/smtp/v1/exceptions/{created['id']}")

    writer = threading.Thread(target=churn)
    writer.start()
    latencies = []
    while writer.is_alive():
        started = time.monotonic()
        status, _ = controller.api("GET", "/smtp/v1/switches")
        latencies.append((time.monotonic() - started) * 1000)
        assert status == 200
    writer.join()
    return latencies


# -- 6. scale of the policy itself ---------------------------------------------

def bench_scale(workdir):
    rows = []
    for exceptions in (0, 10, 100, 1000, 10000):
        for uplinks in ((), (1,), (1, 2, 3, 4)):
            policy = load_policy(policy_with(exceptions, workdir / "scale.yaml", uplinks))
            rows.append({"exceptions": exceptions, "uplinks": len(uplinks),
                         "flows": len(compile_switch(policy, 1)), "inside_switch_flows": len(compile_switch(policy, 2))})
    shipped = len(compile_switch(load_policy(ROOT / "policy.yaml"), 1))
    return {"rows": rows, "shipped_policy_flows": shipped}


# -- 11. hostile peers: one silent switch in a fleet; a reply that never ends ----

def bench_silent_in_fleet(size, exceptions, changes, workdir):
    """A fleet of `size` edge switches and one more, listed too, whose
    connection goes through a proxy (mininet/hostile.py). Changes (an
    exception added, then removed) while every switch answers, then while
    the extra one is silent: request to answer, p50 and p99, and which
    switches each answer says enforce it."""
    from hostile import HostileProxy

    policy = fleet_policy(size + 1, exceptions, workdir / f"silent-{size}.yaml")
    rows = []
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(Fleet(size))
        hostile = stack.enter_context(Bridge("smtphostile"))
        run("ovs-vsctl", "set", "bridge", hostile.name, f"other-config:datapath-id={size + 1:016x}")
        controller = Controller(policy, workdir / f"silent-{size}.txt", state_file=workdir / f"silent-{size}.json",
                                audit_seconds=None).start()
        stack.callback(controller.stop)
        proxy = HostileProxy(controller.of_port)
        stack.callback(proxy.close)
        fleet.connect(lambda index: [controller.of_port])
        hostile.connect(proxy.port)
        wait_in_sync([controller], size + 1)
        for mode in ("forward", "silent"):
            proxy.mode = mode
            latencies, enforced = [], []
            for n in range(changes):
                address = str(exception_address(exceptions + n))
                path, body = "/smtp/v1/exceptions", {"address": address, "direction": "inbound", "reason": "bench"}
                for method in ("POST", "DELETE"):
                    t0 = time.monotonic()
                    status, answer = controller.api(method, path, body, timeout=120)
                    latencies.append((time.monotonic() - t0) * 1000)
                    enforced.append(len(answer["switches"]["enforced"]))
                    path, body = f"/smtp/v1/exceptions/{answer.get('id')}", None
            rows.append({"switches": size + 1, "exceptions": exceptions, "silent": int(mode == "silent"),
                         "first_ms": round(latencies[0], 1), "change_p50_ms": round(percentile(latencies, 0.5), 1),
                         "change_p99_ms": round(percentile(latencies, 0.99), 1),
                         "others_enforced_every_time": all(e >= size for e in enforced),
                         "changes_all_ms": [round(v, 1) for v in latencies]})
    return rows


def bench_more_forever(exceptions, workdir, seconds=60):
    """A switch that answers a flow-stats request with REPLY_MORE parts that
    never end: the controller's memory before, at its peak, and after, and
    how long until it closes the connection."""
    from hostile import HostileProxy

    policy = fleet_policy(2, exceptions, workdir / "more.yaml")
    with contextlib.ExitStack() as stack:
        good = stack.enter_context(Bridge("smtpgood"))
        hostile = stack.enter_context(Bridge("smtphostile"))
        run("ovs-vsctl", "set", "bridge", hostile.name, "other-config:datapath-id=0000000000000002")
        controller = Controller(policy, workdir / "more.txt", state_file=workdir / "more.json", audit_seconds=None).start()
        stack.callback(controller.stop)
        proxy = HostileProxy(controller.of_port)
        stack.callback(proxy.close)
        good.connect(controller.of_port)
        hostile.connect(proxy.port)
        wait_in_sync([controller], 2)
        pid = controller.process.pid
        before = process_rss_mib(pid)
        proxy.mode = "more_forever"
        started = time.monotonic()
        asked = threading.Thread(target=controller.api, args=("GET", "/smtp/v1/switches?verify=1"), daemon=True)
        asked.start()
        peak, closed_s = before, None
        while time.monotonic() - started < seconds:
            peak = max(peak, process_rss_mib(pid))
            if closed_s is None and "multipart reply passed" in controller.log():
                closed_s = time.monotonic() - started
                break
            time.sleep(0.05)
        time.sleep(1)
        status, answer = controller.api("POST", "/smtp/v1/exceptions",
                                        {"address": "10.20.7.1", "direction": "inbound", "reason": "bench"})
        return {"exceptions": exceptions, "rss_before_mib": before, "rss_peak_mib": peak,
                "rss_after_mib": process_rss_mib(pid), "closed_after_s": None if closed_s is None else round(closed_s, 2),
                "parts_sent": proxy.sent["more_parts"], "change_after": status,
                "good_switch_enforced": "0000000000000001" in answer["switches"]["enforced"]}


# -- 10. the same code on the old and the new platform stacks ------------------

# name: (Python, framework, a pin over the project's own). "old" is the stack
# before issue 22: Ryu 4.34 with eventlet 0.33.3 on Python 3.11.
STACKS = {
    "old": ("3.11", "ryu", "eventlet==0.33.3"),
    "ryu-py3.11": ("3.11", "ryu", None),
    "ryu-py3.13": ("3.13", "ryu", None),
    "os-ken-py3.13": ("3.13", "os-ken", None),
}
STACK_VENVS = Path(os.environ.get("SMTP_BORDER_STACK_VENVS", "/var/tmp/smtp-border-stacks"))


def interpreter(version):
    """A python<version> from pyenv (as scripts/platforms.sh finds it), else PATH."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(pyenv.glob(f"{version}.*/bin/python{version}")):
        return str(candidate)
    found = shutil.which(f"python{version}")
    if not found:
        raise SystemExit(f"bench: no python{version} here (pyenv or PATH)")
    return found


def stack_bin(name):
    """The bin of a virtualenv holding this checkout on stack `name`, made
    once (scripts/setup.sh, then the stack's pin) and kept in STACK_VENVS."""
    if name == "this":
        return VENV_BIN
    version, framework, pin = STACKS[name]
    venv = STACK_VENVS / name
    if not (venv / "bin" / "python").exists():
        run("bash", str(ROOT / "scripts" / "setup.sh"), env=dict(os.environ, APT="0", VENV=str(venv), FRAMEWORK=framework,
                                                                 PYTHON=interpreter(version)))
        if pin:
            run(str(venv / "bin" / "pip"), "install", "-q", "--no-deps", pin)
    return venv / "bin"


def stack_versions(bin_dir):
    code = ("import sys, importlib.metadata as m\n"
            "from ryu_apps import framework\n"
            "print(framework.NAME, framework.VERSION, m.version('eventlet'), sys.version.split()[0])")
    name, version, eventlet, python = run(str(bin_dir / "python"), "-W", "ignore", "-c", code,
                                          cwd=str(ROOT)).stdout.split()
    return {"framework": f"{name} {version}", "eventlet": eventlet, "python": python}


def startup_s(size, workdir, bin_dir, repeats):
    """Seconds from starting the controller (policy of `size` exceptions) to its API answering."""
    policy = policy_with(size, workdir / f"start-{size}.yaml")
    times = []
    for n in range(repeats):
        controller = Controller(policy, workdir / f"start-{size}-{n}.txt", state_file=workdir / f"start-{size}-{n}.json",
                                audit_seconds=None, bin_dir=bin_dir)
        started = time.monotonic()
        controller.start()
        try:
            times.append(api_answering_s(controller, started))
        finally:
            controller.stop()
    return times


def bench_stacks(names, install_sizes, change_size, changes, start_size, workdir, repeats):
    """Each stack in turn, on the same bridge and the same code: the full
    install against the ovs-ofctl floor (ratio), one change (p50, p99) and
    start-up to the API answering."""
    rows = []
    for name in names:
        bin_dir = stack_bin(name)
        (workdir / name).mkdir(exist_ok=True)
        row = {"stack": name, **stack_versions(bin_dir)}
        for install in bench_full_install(install_sizes, workdir / name, repeats=repeats, bin_dir=bin_dir):
            row[f"install_{install['exceptions']}_ratio"] = install["ratio"]
            row[f"install_{install['exceptions']}_ms"] = install["hello_to_barrier_ms"]
        change = bench_one_change((change_size,), changes, workdir / name, bin_dir=bin_dir)[0]
        row.update(change_exceptions=change_size, add_p50_ms=change["add_p50_ms"], add_p99_ms=change["add_p99_ms"],
                   delete_p50_ms=change["delete_p50_ms"], delete_p99_ms=change["delete_p99_ms"])
        starts = startup_s(start_size, workdir / name, bin_dir, repeats)
        row.update(start_exceptions=start_size, start_to_api_s=round(statistics.median(starts), 2),
                   start_to_api_all_s=[round(v, 2) for v in starts])
        rows.append(row)
    return rows


# -- main ---------------------------------------------------------------------

def table(title, rows):
    print(f"\n{title}")
    if not rows:
        return
    headers = [h for h, v in rows[0].items() if not isinstance(v, list)]  # lists go to the JSON only

    def cell(value):
        return ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)

    widths = [max(len(h), *(len(cell(r[h])) for r in rows)) for h in headers]
    print("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  " + "  ".join(cell(row[h]).rjust(w) for h, w in zip(headers, widths)))


SECTIONS = ("install", "change", "firewall", "dataplane", "convergence", "cold", "scale", "fleet", "stacks", "hostile")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every measurement at a small size (for the test suite)")
    parser.add_argument("--json", default=str(ROOT / "results" / "bench.json"), help="where to write the figures")
    parser.add_argument("--only", help=f"comma-separated sections to run (default all): {', '.join(SECTIONS)}")
    parser.add_argument("--stacks", help="comma-separated stacks for section 10 (default: all of"
                        f" {', '.join(STACKS)}; with --quick, 'this': the running virtualenv only); their virtualenvs"
                        f" are made once in {STACK_VENVS}")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (Open vSwitch and Mininet)")
    sizes = (10, 100) if args.quick else (100, 1000, 10000)
    change_sizes = (10, 100) if args.quick else (10, 1000, 10000)
    changes = 5 if args.quick else 200
    seconds = 1 if args.quick else 4
    wanted = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = wanted - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    with tempfile.TemporaryDirectory(prefix="smtp-border-bench-") as tmp:
        workdir = Path(tmp)
        results = {"machine": {"cores": os.cpu_count(), "ovs": run("ovs-vsctl", "--version").stdout.splitlines()[0],
                               "python": sys.version.split()[0]}}
        if "install" in wanted:
            results["full_install"] = bench_full_install(sizes, workdir)
            table("1. Full install: switch connect to last barrier, against ovs-ofctl --bundle add-flows", results["full_install"])
        if "change" in wanted:
            results["one_change"] = bench_one_change(change_sizes, changes, workdir)
            table("2. One change: REST request to barrier-confirmed answer", results["one_change"])
        if "firewall" in wanted:
            results["rest_firewall"] = bench_rest_firewall(20 if args.quick else 1000, workdir)
            table("3. Against ryu.app.rest_firewall: the same allow rules, one REST request each", [results["rest_firewall"]])
        if "dataplane" in wanted:
            results["data_plane"] = bench_data_plane(100 if args.quick else 10000, seconds, workdir,
                                                     rounds=2 if args.quick else 7, controller_seconds=None if args.quick else 12)
            table("4-5. Data plane (iperf3, TCP connects to port 2525) and controller cost", [results["data_plane"]])
        if "convergence" in wanted:
            results["convergence"] = [bench_convergence(size, workdir, samples=2 if args.quick else 5)
                                      for size in ((10,) if args.quick else (100, 10000))]
            table("7. Convergence: reconnect in sync, GET /switches during changes, audit by counts, full audit, repair after del-flows (audit every 1 s)",
                  results["convergence"])
        if "cold" in wanted:
            results["cold"] = bench_cold((100, 1000) if args.quick else (10000, 50000), workdir, repeats=2 if args.quick else 3)
            table("8. Cold paths: check, start to API, first install after start (from hello) against the following ones"
                  " and the ovs-ofctl --bundle floor, reload after a one-line edit, memory", results["cold"])
        if "fleet" in wanted:
            sizes_fleet = (4,) if args.quick else (50, 100)
            results["fleet"] = [row for replicas in (1, 2) for row in bench_fleet(
                sizes_fleet, 20 if args.quick else 1000, 2 if args.quick else 20, workdir, replicas=replicas)]
            table("9. Fleet: every switch connecting at once until all enforce, one change fanned out to all"
                  " (request to answer), controllers' CPU and memory; one controller, then two sharing the switches",
                  results["fleet"])
        if "hostile" in wanted:
            results["silent_in_fleet"] = bench_silent_in_fleet(4 if args.quick else 50, 20 if args.quick else 1000,
                                                               2 if args.quick else 20, workdir)
            table("11a. One silent switch in a fleet: change request to answer, every switch answering, then one"
                  " silent (its first change waits the deadline, later ones do not)", results["silent_in_fleet"])
            results["more_forever"] = bench_more_forever(20 if args.quick else 1000, workdir,
                                                         seconds=30 if args.quick else 60)
            table("11b. A switch answering REPLY_MORE forever: controller memory and the close",
                  [results["more_forever"]])
        if "stacks" in wanted:
            names = args.stacks.split(",") if args.stacks else (["this"] if args.quick else list(STACKS))
            unknown_stacks = set(names) - set(STACKS) - {"this"}
            if unknown_stacks:
                parser.error(f"unknown stack(s) {', '.join(sorted(unknown_stacks))}; choose from {', '.join(STACKS)}, this")
            if args.quick:
                results["stacks"] = bench_stacks(names, (10,), 10, 5, 100, workdir, repeats=2)
            else:
                results["stacks"] = bench_stacks(names, (1000, 10000), 1000, 100, 10000, workdir, repeats=5)
            table("10. Platform stacks, the same code: full install (hello to barrier) against the ovs-ofctl floor,"
                  " one change, start to the API answering", results["stacks"])
        if "scale" in wanted:
            results["scale"] = bench_scale(workdir)
            table("6. Flows per switch", results["scale"]["rows"])
            print(f"\n  shipped policy.yaml: {results['scale']['shipped_policy_flows']} flows on the border switch")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
