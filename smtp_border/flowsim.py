"""Evaluate abstract flow rules the way an OpenFlow 1.3 switch does.

Highest priority match wins in each table, metadata is written under its mask,
goto_table moves on, a table miss drops (the OpenFlow 1.3 default). Used to
check compiled rules against smtp_border.semantics (the tests), and to say
which flow of a switch decides a packet (smtp_border/explain.py).
"""
from .rules import CLASSIFY_TABLE, ETH_TYPE_IPV4, ETH_TYPE_IPV6, IP_PROTO_TCP, METADATA_MASK, IpFrag

FRAGMENT_BITS = {"no": IpFrag.NO.value[0], "first": IpFrag.FIRST.value[0], "later": IpFrag.LATER.value[0]}


def packet_fields(packet):
    """The packet as a switch classifies it: OXM field name -> value. A later
    fragment has no transport header, so Open vSwitch reads its ports as 0."""
    family = "ipv4" if packet.src.version == 4 else "ipv6"
    fields = {
        "in_port": packet.in_port,
        "eth_type": ETH_TYPE_IPV4 if family == "ipv4" else ETH_TYPE_IPV6,
        "ip_proto": packet.ip_proto,
        f"{family}_src": packet.src.value,
        f"{family}_dst": packet.dst.value,
        "ip_frag": FRAGMENT_BITS[packet.fragment],
    }
    if packet.ip_proto == IP_PROTO_TCP:
        fields["tcp_dst"] = 0 if packet.fragment == "later" else packet.dst_port
    return fields


def _matches(match, fields, metadata):
    for field, value, mask in match.fields():
        have = metadata if field.attribute == "metadata" else fields.get(field.oxm)
        if have is None or (have if mask is None else have & mask) != value:
            return False
    return True


def forwards(rules, packet, start=CLASSIFY_TABLE):
    """True if the rules hand the packet to NORMAL forwarding, False if dropped."""
    possible = outcomes(rules, packet, start)
    if len(possible) > 1:
        raise AssertionError(f"overlapping rules at one priority disagree on {packet}")
    return possible.pop()


def outcomes(rules, packet, start=CLASSIFY_TABLE):
    """Every verdict a switch may reach: where flows of equal priority overlap
    with different instructions, OpenFlow leaves the choice to the switch
    (mid-change tables have such pairs), so each choice is followed."""
    by_table = {}
    for rule in rules:
        by_table.setdefault(rule.table, []).append(rule)
    return _walk(by_table, start, 0, packet_fields(packet))


def _walk(by_table, table, metadata, fields):
    candidates = [r for r in by_table.get(table, []) if _matches(r.match, fields, metadata)]
    if not candidates:
        return {False}  # table miss: OpenFlow 1.3 drops
    best = max(r.priority for r in candidates)
    found = set()
    for ins in {r.instructions for r in candidates if r.priority == best}:
        if ins.output_normal:
            found.add(True)
            continue
        if ins.goto_table is None:
            found.add(False)
            continue
        if ins.goto_table <= table:
            raise AssertionError("goto_table must move forward")
        written = metadata if ins.write_metadata is None else (metadata & ~METADATA_MASK) | ins.write_metadata
        found |= _walk(by_table, ins.goto_table, written, fields)
    return found


def path(rules, packet, start=CLASSIFY_TABLE):
    """The flows a packet meets, table by table, in the order a switch applies
    them: [FlowRule], the last one deciding (its table misses: the list ends
    there, and the packet is dropped). Where flows of equal priority overlap,
    the first in the rules' own order is taken (a settled switch has none)."""
    by_table = {}
    for rule in rules:
        by_table.setdefault(rule.table, []).append(rule)
    met, table, metadata, fields = [], start, 0, packet_fields(packet)
    while True:
        candidates = [r for r in by_table.get(table, []) if _matches(r.match, fields, metadata)]
        if not candidates:
            return met
        best = max(candidates, key=lambda r: r.priority)
        met.append(best)
        ins = best.instructions
        if ins.output_normal or ins.goto_table is None or ins.goto_table <= table:
            return met
        if ins.write_metadata is not None:
            metadata = (metadata & ~METADATA_MASK) | ins.write_metadata
        table = ins.goto_table
