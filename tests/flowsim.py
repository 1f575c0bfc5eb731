"""Evaluate abstract flow rules the way an OpenFlow 1.3 switch does.

Highest priority match wins in each table, metadata is written under its mask,
goto_table moves on, a table miss drops (the OpenFlow 1.3 default). Used to
check compiled rules against smtp_border.semantics.
"""
from smtp_border.rules import CLASSIFY_TABLE, ETH_TYPE_IPV4, ETH_TYPE_IPV6, METADATA_MASK


def _matches(match, packet, metadata):
    eth_type = ETH_TYPE_IPV4 if packet.src.version == 4 else ETH_TYPE_IPV6
    checks = [
        (match.in_port, packet.in_port),
        (match.eth_type, eth_type),
        (match.ip_proto, packet.ip_proto),
        (match.tcp_dst, packet.dst_port if packet.ip_proto == 6 else None),
    ]
    if any(want is not None and want != have for want, have in checks):
        return False
    if match.metadata is not None and metadata & METADATA_MASK != match.metadata:
        return False
    if match.ip_src is not None and packet.src not in match.ip_src:
        return False
    if match.ip_dst is not None and packet.dst not in match.ip_dst:
        return False
    return True


def forwards(rules, packet):
    """True if the rules hand the packet to NORMAL forwarding, False if dropped."""
    possible = outcomes(rules, packet)
    if len(possible) > 1:
        raise AssertionError(f"overlapping rules at one priority disagree on {packet}")
    return possible.pop()


def outcomes(rules, packet):
    """Every verdict a switch may reach: where flows of equal priority overlap
    with different instructions, OpenFlow leaves the choice to the switch
    (mid-change tables have such pairs), so each choice is followed."""
    by_table = {}
    for rule in rules:
        by_table.setdefault(rule.table, []).append(rule)
    return _walk(by_table, CLASSIFY_TABLE, 0, packet)


def _walk(by_table, table, metadata, packet):
    candidates = [r for r in by_table.get(table, []) if _matches(r.match, packet, metadata)]
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
        found |= _walk(by_table, ins.goto_table, written, packet)
    return found
