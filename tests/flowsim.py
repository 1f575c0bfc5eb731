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
    by_table = {}
    for rule in rules:
        by_table.setdefault(rule.table, []).append(rule)
    table, metadata = CLASSIFY_TABLE, 0
    for _ in range(len(by_table) + 1):
        candidates = [r for r in by_table.get(table, []) if _matches(r.match, packet, metadata)]
        if not candidates:
            return False
        best = max(r.priority for r in candidates)
        winners = [r for r in candidates if r.priority == best]
        if len({r.instructions for r in winners}) > 1:
            raise AssertionError(f"overlapping rules at priority {best} disagree: {winners}")
        ins = winners[0].instructions
        if ins.output_normal:
            return True
        if ins.write_metadata is not None:
            metadata = (metadata & ~METADATA_MASK) | ins.write_metadata
        if ins.goto_table is None:
            return False
        if ins.goto_table <= table:
            raise AssertionError("goto_table must move forward")
        table = ins.goto_table
    raise AssertionError("pipeline did not end")
