"""Ask Open vSwitch itself: install policies on a real OVS bridge through the
app (start-up, then reloads), and trace thousands of random packets with
`ovs-appctl ofproto/trace`; every verdict must match the reference semantics."""
import datetime
import os
import random
import re
import subprocess

import netaddr
import pytest
import yaml

from conftest import ROOT
from lab import Controller
from smtp_border.compiler import compile_switch
from smtp_border.ordering import ADD, plan
from smtp_border.policy import load_policy, parse_policy
from smtp_border.rules import AUDIT_METERS, to_ofctl, with_version
from smtp_border.semantics import IP_PROTO_TCP, IP_PROTO_UDP, Packet, is_allowed
from smtp_border.single_table import compile_single_table

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Open vSwitch needs root"),
]
BRIDGE = "smtptrace"
PORTS = (1, 2, 3)
PACKETS_PER_POLICY = 1000
SEEDS = (1, 8, 9, 10)  # random policies: every switch by addresses; uplinks [1]; uplinks []; an access switch


@pytest.fixture
def bridge():
    subprocess.run(["ovs-vsctl", "--if-exists", "del-br", BRIDGE], check=True)
    command = ["ovs-vsctl", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev",
               "protocols=OpenFlow13", "fail_mode=secure", "other-config:datapath-id=0000000000000001"]
    for port in PORTS:
        command += ["--", "add-port", BRIDGE, f"{BRIDGE}{port}", "--", "set", "interface", f"{BRIDGE}{port}",
                    "type=internal", f"ofport_request={port}"]
    subprocess.run(command, check=True)
    try:
        yield BRIDGE
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", BRIDGE], check=True)


def random_policy(rng):
    """A random but valid policy document, IPv4 and IPv6."""
    v4 = [netaddr.IPNetwork(f"10.{n}.0.0/16") for n in rng.sample(range(1, 9), rng.randint(1, 2))]
    v6 = [netaddr.IPNetwork(f"fd00:{n}::/48") for n in rng.sample(range(1, 9), rng.randint(0, 2))]
    campus = v4 + v6

    def inside(network, longest):
        length = rng.randint(max(network.prefixlen, longest - 8), longest)
        offset = rng.randrange(0, 2 ** (length - network.prefixlen)) << ((32 if network.version == 4 else 128) - length)
        return netaddr.IPNetwork(f"{netaddr.IPAddress(network.first + offset, network.version)}/{length}")

    exceptions, seen = [], set()
    for _ in range(rng.randint(3, 15)):
        network = rng.choice(campus)
        address = inside(network, 32 if network.version == 4 else 128)
        if address in seen:
            continue
        seen.add(address)
        exception = {"address": str(address), "direction": rng.choice(["inbound", "outbound", "both"]), "reason": "random"}
        if rng.random() < 0.2:
            exception["expires"] = rng.choice(["2020-01-01T00:00:00Z", "2040-01-01T00:00:00Z"])
        exceptions.append(exception)
    document = {
        "campus": {"prefixes": [str(n) for n in campus]},
        "smtp_ports": rng.choice([[25], [25, 587]]),
        "gateways": [{"name": "relay", "addresses": [str(inside(n, 32 if n.version == 4 else 128)) for n in campus[:2]]}],
        "exceptions": exceptions,
        "audit": {"sample_rate": rng.choice([0, 10])},
    }
    switches = rng.choice([None, [1], [1, 3], [], "access"])
    if switches == "access":
        document["switches"] = [{"dpid": 1, "access": True}]
    elif switches is not None:
        document["switches"] = [{"dpid": 1, "uplinks": switches}]
    return document


def random_packets(rng, policy, count):
    named = list(policy.campus) + [a for g in policy.gateways for a in g.addresses] + [e.address for e in policy.exceptions]
    outside = [netaddr.IPNetwork("198.51.100.0/24"), netaddr.IPNetwork("2001:db8::/120")]
    for _ in range(count):
        version = rng.choice([4, 6])
        pool = [n for n in named + outside if n.version == version]

        def address():
            network = rng.choice(pool)
            where = rng.choice([0, network.size - 1, rng.randrange(network.size), -1, network.size])
            value = min(max(network.first + where, 0), 2 ** (32 if version == 4 else 128) - 1)
            return netaddr.IPAddress(value, version)

        proto = rng.choice([IP_PROTO_TCP] * 4 + [IP_PROTO_UDP])
        port = rng.choice(list(policy.smtp_ports) + [25, 587, 80, 0])  # 0: a header too short for the ports
        fragment = rng.choice(["no"] * 6 + ["first", "later"])
        yield Packet(rng.choice(PORTS), address(), address(), proto, port, fragment)


def trace(packet):
    family = proto = "tcp" if packet.ip_proto == IP_PROTO_TCP else "udp"
    if packet.src.version == 6:
        family += "6"
        addresses = f"ipv6_src={packet.src},ipv6_dst={packet.dst}"
    else:
        addresses = f"nw_src={packet.src},nw_dst={packet.dst}"
    # A later fragment has no transport header (Open vSwitch reads its ports as 0).
    ports = "" if packet.fragment == "later" else f",{proto}_src=40000,{proto}_dst={packet.dst_port}"
    flow = f"in_port={packet.in_port},{family},{addresses},nw_frag={packet.fragment}{ports},dl_dst=ff:ff:ff:ff:ff:ff"
    out = subprocess.run(["ovs-appctl", "ofproto/trace", BRIDGE, flow], capture_output=True, text=True, check=True).stdout
    actions = re.search(r"^Datapath actions: (.*)$", out, re.M).group(1)
    while "(" in actions:  # drop meter(...), userspace(...): what is left are output ports
        actions = re.sub(r"\w*\([^()]*\)", "", actions)
    return any(token.strip().isdigit() for token in actions.split(","))


def test_ovs_decides_every_traced_packet_as_the_reference(bridge, tmp_path):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text((ROOT / "policy.yaml").read_text())
    controller = Controller(policy_file, tmp_path / "ryu-manager.txt").start()
    checked, mismatches = 0, []
    try:
        subprocess.run(["ovs-vsctl", "set-controller", bridge, f"tcp:127.0.0.1:{controller.of_port}"], check=True)
        controller.wait_installs({1: 1})
        documents = [None] + [random_policy(random.Random(seed)) for seed in SEEDS]
        for seed, document in zip((0,) + SEEDS, documents):
            if document is not None:
                policy_file.write_text(yaml.safe_dump(document))
                status, body = controller.api("POST", "/smtp/v1/reload")
                assert status == 200, body
            policy = load_policy(policy_file)
            status, body = controller.api("GET", "/smtp/v1/switches")
            assert body["switches"][0]["in_sync"] is True, body
            now = datetime.datetime.now(datetime.timezone.utc)
            for packet in random_packets(random.Random(seed), policy, PACKETS_PER_POLICY):
                checked += 1
                if trace(packet) != is_allowed(policy, 1, packet, now):
                    mismatches.append((seed, packet))
        print(f"ofproto/trace: {checked} packets over {len(documents)} policies checked against the reference, "
              f"{len(mismatches)} mismatches")
        assert controller.openflow_errors() == []
    finally:
        controller.stop()
    assert mismatches == []
    assert checked == PACKETS_PER_POLICY * (len(SEEDS) + 1)


def ofctl(*args):
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], check=True, capture_output=True, text=True)


def strict_match(rule):
    """The rule's table, priority and match in ovs-ofctl syntax, for --strict del-flows."""
    text = to_ofctl(rule).split(" actions=")[0]
    return ",".join(field for field in text.split(",") if not field.startswith("cookie="))


CAMPUS_CHANGE = {"campus": {"prefixes": ["10.20.0.0/16", "10.40.0.0/16"]},
                 "gateways": [{"name": "relay", "addresses": ["10.20.0.25"]}],
                 "switches": [{"dpid": 1, "uplinks": []}]}  # by addresses: classification follows the prefixes


def test_without_bundles_no_step_opens_what_both_policies_block(bridge, tmp_path):
    """The ordering for switches without bundles (smtp_border/ordering.py), on
    a real bridge: each flow mod of the plan is applied alone with ovs-ofctl,
    and after every one Open vSwitch traces packets on which the old and the
    new policy agree; each must get that verdict. Pairs: the campus change
    that leaked through the union of old and new flows, and random ones."""
    changed = dict(CAMPUS_CHANGE, campus={"prefixes": ["10.20.0.0/16", "10.50.0.0/16"]})
    pairs = [(CAMPUS_CHANGE, changed, 0)]
    for seed in (5, 6):
        old_document, new_document = random_policy(random.Random(seed)), random_policy(random.Random(seed + 100))
        # Both enforce on the bridge (a random one may list no switch): by uplink, then by addresses
        # alone; and they share a campus prefix, so that there is something both block.
        old_document["switches"] = [{"dpid": 1, "uplinks": [1]}]
        new_document.pop("switches", None)
        prefixes = new_document["campus"]["prefixes"]
        prefixes += [p for p in old_document["campus"]["prefixes"][:1] if p not in prefixes]
        pairs.append((old_document, new_document, seed % 2))
    for meter in AUDIT_METERS:
        ofctl("add-meter", bridge, f"meter={meter},pktps,burst,band=type=drop,rate=10,burst_size=10")
    now = datetime.datetime.now(datetime.timezone.utc)
    steps = traced = 0
    for number, (old_document, new_document, version) in enumerate(pairs):
        old = parse_policy(yaml.safe_dump(old_document), source="old")
        new = parse_policy(yaml.safe_dump(new_document), source="new")
        before = {with_version(r, version) for r in compile_switch(old, 1, now)}
        ofctl("del-flows", bridge)
        (tmp_path / "old.flows").write_text("".join(to_ofctl(r) + "\n" for r in before))
        ofctl("--bundle", "add-flows", bridge, str(tmp_path / "old.flows"))
        rng = random.Random(number)
        candidates = list(random_packets(rng, old, 300)) + list(random_packets(rng, new, 300))
        if number == 0:  # the packet that leaked, and an ordinary campus-to-campus twin
            candidates += [Packet(2, netaddr.IPAddress("10.50.1.1"), netaddr.IPAddress("10.40.1.1"), IP_PROTO_TCP, 25),
                           Packet(2, netaddr.IPAddress("10.20.1.1"), netaddr.IPAddress("10.20.2.2"), IP_PROTO_TCP, 25)]
        agreed = [(p, is_allowed(old, 1, p, now)) for p in candidates if is_allowed(old, 1, p, now) == is_allowed(new, 1, p, now)]
        probes = agreed[-2:] if number == 0 else []
        for verdict in (True, False):  # blocked by both, and their allowed twins
            both = [(p, v) for p, v in agreed if v == verdict]
            probes += rng.sample(both, min(6, len(both)))
        assert {verdict for _, verdict in probes} == {True, False}, "probes need both verdicts"
        _, phases = plan(before, compile_switch(new, 1, now))
        for phase in phases:
            for op, rule in phase:
                if op == ADD:
                    ofctl("add-flow", bridge, to_ofctl(rule))
                else:
                    ofctl("--strict", "del-flows", bridge, strict_match(rule))
                steps += 1
                for packet, verdict in probes:
                    traced += 1
                    assert trace(packet) == verdict, (number, op, to_ofctl(rule), packet)
    print(f"\nordered changes on a real bridge: {len(pairs)} policy pairs, {steps} flow mods, "
          f"{traced} traces after single flow mods, 0 wrong verdicts")


def test_one_table_decides_every_traced_packet_as_the_reference(bridge, tmp_path):
    """The single_table profile's flows (smtp_border/single_table.py), loaded
    with ovs-ofctl, judged by Open vSwitch itself against the reference: the
    shipped policy and the random ones. (The app delivering them is tested
    in test_campus_mininet.py's single-table variant.)"""
    ofctl("set-frags", bridge, "nx-match")  # as the app sets it on every enforcing switch
    for meter in AUDIT_METERS:
        ofctl("add-meter", bridge, f"meter={meter},pktps,burst,band=type=drop,rate=10,burst_size=10")
    documents = [yaml.safe_load((ROOT / "policy.yaml").read_text())] + [random_policy(random.Random(s)) for s in SEEDS]
    now = datetime.datetime.now(datetime.timezone.utc)
    checked, mismatches = 0, []
    for seed, document in zip((0,) + SEEDS, documents):
        policy = parse_policy(yaml.safe_dump(document), source=f"seed {seed}")
        flows = tmp_path / f"single-{seed}.flows"
        flows.write_text("".join(to_ofctl(r) + "\n" for r in compile_single_table(policy, 1, now)))
        ofctl("del-flows", bridge)
        ofctl("add-flows", bridge, str(flows))
        for packet in random_packets(random.Random(seed), policy, PACKETS_PER_POLICY):
            checked += 1
            if trace(packet) != is_allowed(policy, 1, packet, now):
                mismatches.append((seed, packet))
    print(f"ofproto/trace, one table: {checked} packets over {len(documents)} policies, {len(mismatches)} mismatches")
    assert mismatches == []
    assert checked == PACKETS_PER_POLICY * len(documents)
