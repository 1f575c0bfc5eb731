#!/usr/bin/env python3
"""Crafted packets for the data-plane tests, run inside Mininet hosts (scapy).

    craft.py send --iface IF CASES.json    send each case's frames, in order
    craft.py watch --iface IF --seconds S  print one JSON line per IP frame seen

A case is a dict: kind (see BUILDERS), src and dst addresses, src_mac and
dst_mac, port (TCP destination) and marker. The marker names the case in
what arrives: it is the TCP source port, the IPv4 identification and the IPv6
fragment identification, so that a watcher can tell the cases apart even in
fragments that carry no TCP header.

The watcher reads the frames' bytes itself rather than through scapy's
dissectors, which give up on exactly the packets under test (truncated
headers, cut extension-header chains).
"""
import argparse
import json
import sys
import time

from scapy.all import (
    IP, TCP, Dot1AD, Dot1Q, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, PadN, Raw,
    fragment, fragment6, sendp, sniff,
)
from scapy.contrib.mpls import MPLS

PAYLOAD = b"x" * 64  # a SYN may carry data; it makes room to fragment in


def _ip(case, **fields):
    if ":" in case["dst"]:
        return IPv6(src=case["src"], dst=case["dst"])
    return IP(src=case["src"], dst=case["dst"], id=case["marker"], **fields)


def _syn(case):
    return TCP(sport=case["marker"], dport=case["port"], flags="S", seq=1000)


def _ether(case):
    return Ether(src=case["src_mac"], dst=case["dst_mac"])


def whole(case):
    """An ordinary SYN: the path works and the policy sees the port."""
    return [_ether(case) / _ip(case) / _syn(case) / Raw(PAYLOAD)]


def fragmented(case):
    """A SYN in fragments, the whole TCP header in the first."""
    return _fragments(case, 32)


def tiny(case):
    """A SYN whose first fragment holds 8 bytes of TCP: the ports, no more
    (RFC 1858); a switch needs 20 to read them."""
    return _fragments(case, 8)


def _fragments(case, size):
    if ":" in case["dst"]:
        packet = IPv6(src=case["src"], dst=case["dst"]) / IPv6ExtHdrFragment(id=case["marker"]) / _syn(case) / Raw(PAYLOAD)
        return [_ether(case) / f for f in fragment6(packet, 40 + 8 + size)]
    return [_ether(case) / f for f in fragment(_ip(case) / _syn(case) / Raw(PAYLOAD), fragsize=size)]


def chain(case):
    """IPv6 only: hop-by-hop and destination options before TCP, unfragmented."""
    packet = IPv6(src=case["src"], dst=case["dst"]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / _syn(case)
    return [_ether(case) / packet / Raw(PAYLOAD)]


def chain_fragmented(case):
    """IPv6 only: destination options then TCP, fragmented after the whole chain."""
    return _destopt_fragments(case, pad=4, size=48)


def chain_cut(case):
    """IPv6 only: destination options long enough to push TCP out of the
    first fragment (RFC 7112 lets a node drop such a first fragment)."""
    return _destopt_fragments(case, pad=60, size=48)


def _destopt_fragments(case, pad, size):
    options = IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * pad)])
    packet = IPv6(src=case["src"], dst=case["dst"]) / IPv6ExtHdrFragment(id=case["marker"]) / options / _syn(case) / Raw(PAYLOAD)
    return [_ether(case) / f for f in fragment6(packet, 40 + 8 + size)]


def overlap(case):
    """Two first fragments with one identification: one to a port that
    passes (case["decoy"]), one to case["port"], then the rest of the first."""
    decoy = dict(case, port=case["decoy"])
    return _fragments(case, 32)[:1] + _fragments(decoy, 32)


def vlan(case):
    """One 802.1Q tag: a switch parses it and sees the IP packet inside."""
    return [_ether(case) / Dot1Q(vlan=10) / _ip(case) / _syn(case)]


def qinq(case):
    """802.1ad service tag over an 802.1Q tag: more tags than the switch parses."""
    return [_ether(case) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / _ip(case) / _syn(case)]


def double_q(case):
    """Two 802.1Q tags (the older way of stacking them)."""
    return [_ether(case) / Dot1Q(vlan=100) / Dot1Q(vlan=10) / _ip(case) / _syn(case)]


def mpls(case):
    """An MPLS label over the IP packet: no switch here parses beneath it."""
    return [_ether(case) / MPLS(label=16, s=1, ttl=64) / _ip(case) / _syn(case)]


BUILDERS = {f.__name__: f for f in (whole, fragmented, tiny, chain, chain_fragmented, chain_cut, overlap,
                                     vlan, qinq, double_q, mpls)}


def send(iface, cases):
    for case in cases:
        sendp(BUILDERS[case["kind"]](case), iface=iface, verbose=False)
        time.sleep(0.02)


# -- reading frames -----------------------------------------------------------------

TAGS = (0x8100, 0x88A8, 0x9100)
MPLS_TYPES = (0x8847, 0x8848)
IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: (length + 1) * 8 bytes


def describe(frame):
    """What a frame's bytes say, as far as they go: None for one without IP."""
    data = bytes(frame)
    eth_type, offset, tags = int.from_bytes(data[12:14], "big"), 14, 0
    while eth_type in TAGS and len(data) >= offset + 4:
        eth_type, offset, tags = int.from_bytes(data[offset + 2:offset + 4], "big"), offset + 4, tags + 1
    labels = 0
    if eth_type in MPLS_TYPES:
        while len(data) >= offset + 4:
            labels += 1
            bottom = data[offset + 2] & 1
            offset += 4
            if bottom:
                break
        eth_type = 0x0800 if len(data) > offset and data[offset] >> 4 == 4 else 0x86DD
    found = {"tags": tags, "labels": labels, "id": None, "offset": 0, "sport": None, "dport": None, "flags": None}
    if eth_type == 0x0800 and len(data) >= offset + 20:
        ihl = (data[offset] & 0x0F) * 4
        found.update(version=4, id=int.from_bytes(data[offset + 4:offset + 6], "big"),
                     offset=int.from_bytes(data[offset + 6:offset + 8], "big") & 0x1FFF)
        proto, l4 = data[offset + 9], offset + ihl
    elif eth_type == 0x86DD and len(data) >= offset + 40:
        found["version"] = 6
        proto, l4 = data[offset + 6], offset + 40
        while len(data) >= l4 + 8 and (proto in IPV6_EXTENSIONS or proto == 44):
            if proto == 44:
                found.update(id=int.from_bytes(data[l4 + 4:l4 + 8], "big"),
                             offset=int.from_bytes(data[l4 + 2:l4 + 4], "big") >> 3)
                proto, l4 = data[l4], l4 + 8
                if found["offset"]:
                    break
            else:
                proto, l4 = data[l4], l4 + (data[l4 + 1] + 1) * 8
    else:
        return None
    if proto == 6 and not found["offset"]:
        if len(data) >= l4 + 4:
            found.update(sport=int.from_bytes(data[l4:l4 + 2], "big"), dport=int.from_bytes(data[l4 + 2:l4 + 4], "big"))
        if len(data) >= l4 + 14:
            found["flags"] = data[l4 + 13]
    return found


def watch(iface, seconds):
    def show(frame):
        found = describe(frame)
        if found is not None:
            print(json.dumps(found), flush=True)

    sniff(iface=iface, timeout=seconds, prn=show, store=False,
          started_callback=lambda: print(json.dumps({"ready": True}), flush=True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    s.add_argument("--iface", required=True)
    s.add_argument("cases")
    w = sub.add_parser("watch")
    w.add_argument("--iface", required=True)
    w.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "send":
        with open(args.cases) as stream:
            send(args.iface, json.load(stream))
    else:
        watch(args.iface, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
