"""Table-features replies shaped like the switch families of issue 14, as Ryu's
OFPTableFeaturesStats (the fake switch sends them as bytes, through Ryu's
parser, as a switch would).

The shapes follow the vendors' published OpenFlow 1.3 support (docs/hardware.md):
what each table matches, which instructions it takes, where it may go, how
many entries it holds. They are not captures: enough of each to decide a
profile the way the real switch's reply would.
"""
from ryu_apps.framework import ofproto_v1_3 as ofp
from ryu_apps.framework import ofproto_v1_3_parser as parser

POLICY_MATCHES = ("in_port", "eth_type", "ip_proto", "tcp_dst", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst")
ALL_INSTRUCTIONS = (ofp.OFPIT_GOTO_TABLE, ofp.OFPIT_WRITE_METADATA, ofp.OFPIT_WRITE_ACTIONS, ofp.OFPIT_APPLY_ACTIONS,
                    ofp.OFPIT_CLEAR_ACTIONS, ofp.OFPIT_METER)


def table(table_id, max_entries, instructions, next_tables, matches, name=""):
    properties = [
        parser.OFPTableFeaturePropInstructions(type_=ofp.OFPTFPT_INSTRUCTIONS,
                                               instruction_ids=[parser.OFPInstructionId(i) for i in instructions]),
        parser.OFPTableFeaturePropNextTables(type_=ofp.OFPTFPT_NEXT_TABLES, table_ids=list(next_tables)),
        parser.OFPTableFeaturePropOxm(type_=ofp.OFPTFPT_MATCH, oxm_ids=[parser.OFPOxmId(m) for m in matches]),
    ]
    return parser.OFPTableFeaturesStats(table_id=table_id, name=name.encode(), metadata_match=0xFFFFFFFFFFFFFFFF,
                                        metadata_write=0xFFFFFFFFFFFFFFFF, config=0, max_entries=max_entries,
                                        properties=properties)


def open_vswitch(flow_limit=1_000_000):
    """Open vSwitch 3.1: 254 tables, everything everywhere (ip_frag too);
    table 0's max_entries is its flow_limit when one is set."""
    matches = POLICY_MATCHES + ("metadata", "ip_frag", "eth_src", "eth_dst", "vlan_vid")
    return [table(t, flow_limit if t == 0 else 1_000_000,
                  ALL_INSTRUCTIONS if t < 253 else tuple(i for i in ALL_INSTRUCTIONS if i != ofp.OFPIT_GOTO_TABLE),
                  range(t + 1, 254), matches) for t in range(254)]


def aruba_3810():
    """ArubaOS-Switch (2930F/3810/5400R) OpenFlow 1.3 multi-table mode:
    tables 0 (start), 100 (policy engine, hardware), 200 (software). No
    write-metadata anywhere; table 0 only directs packets onwards."""
    return [
        table(0, 1, (ofp.OFPIT_GOTO_TABLE,), (100, 200), (), "start"),
        table(100, 2047, (ofp.OFPIT_GOTO_TABLE, ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_METER), (200,),
              POLICY_MATCHES + ("eth_src", "eth_dst", "vlan_vid"), "policy engine"),
        table(200, 64000, (ofp.OFPIT_APPLY_ACTIONS,), (), POLICY_MATCHES + ("eth_src", "eth_dst"), "software"),
    ]


def dell_os9():
    """Dell OS9 (S3048-ON, S4048-ON): one table; no write-metadata, goto-table
    or meters."""
    return [table(0, 1000, (ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_WRITE_ACTIONS), (),
                  POLICY_MATCHES + ("eth_src", "eth_dst", "vlan_vid"), "acl")]


def of_dpa():
    """Broadcom OF-DPA (Edgecore, Pica8 in OF-DPA mode): fixed table ids; the
    ACL policy table is 60 and the only one that matches addresses and ports."""
    return [
        table(0, 64, (ofp.OFPIT_GOTO_TABLE,), (10,), ("in_port",), "ingress port"),
        table(10, 4096, (ofp.OFPIT_GOTO_TABLE, ofp.OFPIT_APPLY_ACTIONS), (20,), ("in_port", "vlan_vid"), "vlan"),
        table(20, 512, (ofp.OFPIT_GOTO_TABLE,), (30, 50, 60), ("in_port", "eth_type", "eth_dst", "vlan_vid"),
              "termination mac"),
        table(30, 16384, (ofp.OFPIT_GOTO_TABLE, ofp.OFPIT_WRITE_ACTIONS), (60,), ("eth_type", "ipv4_dst", "ipv6_dst"),
              "unicast routing"),
        table(50, 32768, (ofp.OFPIT_GOTO_TABLE, ofp.OFPIT_WRITE_ACTIONS), (60,), ("vlan_vid", "eth_dst"), "bridging"),
        table(60, 3072, (ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_WRITE_ACTIONS, ofp.OFPIT_CLEAR_ACTIONS, ofp.OFPIT_METER),
              (), POLICY_MATCHES + ("eth_src", "eth_dst", "vlan_vid", "ip_dscp"), "acl policy"),
    ]


SHAPES = {"open_vswitch": open_vswitch, "aruba_3810": aruba_3810, "dell_os9": dell_os9, "of_dpa": of_dpa}
