"""The Mininet campus that the shipped policy.yaml describes.

    internet (s3, dpid 3)          border (s1, dpid 1)          campus (s2, dpid 2)
    outmx   198.51.100.25  --+                                +-- relay    10.20.0.25   gateway
    outhost 203.0.113.10   --+-- s3 ----(port 1 = uplink) s1 --+-- s2 ---- dept 10.20.1.5 inbound exception
                                                              +-- bigmail  10.20.2.50   outbound exception
                                                              +-- h1       10.20.3.10   ordinary
                                                              +-- h2       10.20.3.11   ordinary

Every host also has an IPv6 address (2001:db8::/32 outside, fd00:20::/48 on
campus). All hosts share one L2 segment and use an on-link default route, so no
router is needed; only the border switch s1 enforces the policy.

From the command line (the controller runs separately):

    mn --custom mininet/campus.py --topo campus --controller remote,port=6653 \
       --switch ovs,datapath=user,protocols=OpenFlow13 --host campushost
"""
from dataclasses import dataclass

from mininet.node import Host
from mininet.topo import Topo

BORDER_DPID = 1
UPLINK_PORT = 1

# name -> (IPv4, IPv6, role). The addresses match policy.yaml. (`mn --custom`
# copies this module's globals over its own, so no name here may be one of
# mn's: HOSTS, SWITCHES, TOPOS, ...)
HOST_ADDRESSES = {
    "outmx": ("198.51.100.25", "2001:db8:100::25", "outside mail server"),
    "outhost": ("203.0.113.10", "2001:db8:203::10", "outside client"),
    "relay": ("10.20.0.25", "fd00:20::25", "campus relay (gateway)"),
    "dept": ("10.20.1.5", "fd00:20:0:1::5", "departmental mail system (inbound exception)"),
    "bigmail": ("10.20.2.50", "fd00:20:0:2::50", "imaging lab (outbound exception)"),
    "h1": ("10.20.3.10", "fd00:20:0:3::10", "ordinary campus host"),
    "h2": ("10.20.3.11", "fd00:20:0:3::11", "ordinary campus host"),
}
OUTSIDE_HOSTS = ("outmx", "outhost")
PREFIX_LENGTH = {4: 8, 6: 32}  # wide on purpose: every address is on-link anyway

# Extra addresses a host owns, to send from when a scenario says so:
# "forged", campus addresses the outside client also owns (a forged campus
# source arriving on the uplink); "unlisted", addresses a campus host owns
# that no campus prefix holds (a NAT pool, a misconfigured or forged source:
# Part 2 must hold by the arrival port).
SOURCES = {
    "forged": ("outhost", {4: "10.20.9.9", 6: "fd00:20:0:9::9"}),
    "unlisted": ("h1", {4: "192.0.2.77", 6: "fd00:77::77"}),
}


@dataclass(frozen=True)
class Scenario:
    """One clause of the policy, as a connection attempt in this campus."""

    clause: str
    client: str
    server: str
    port: int
    allowed: bool  # under the shipped policy.yaml
    proto: str = "tcp"
    source: str = None  # a key of SOURCES: send from that extra address

    def source_address(self, family):
        return SOURCES[self.source][1][family] if self.source else None


# Every clause of the policy, each "blocked" next to an "allowed" twin on the
# same path. The demo plays these; the tests run them in both IP versions.
SCENARIOS = [
    Scenario("Part 2: ordinary campus host to an outside mail server", "h1", "outmx", 25, False),
    Scenario("  twin: same hosts, another port", "h1", "outmx", 2525, True),
    Scenario("  submission (587) is not relay traffic", "h1", "outmx", 587, True),
    Scenario("Part 2: the campus relay (gateway) to the outside", "relay", "outmx", 25, True),
    Scenario("Part 2: outbound exception (50 MB limit) to the outside", "bigmail", "outmx", 25, True),
    Scenario("Part 2: an inbound-only exception to the outside", "dept", "outmx", 25, False),
    Scenario("  twin: same hosts, another port", "dept", "outmx", 2525, True),
    Scenario("Part 2: another ordinary campus host to the outside", "h2", "outmx", 25, False),
    Scenario("campus to campus: host to the relay", "h1", "relay", 25, True),
    Scenario("campus to campus: host to host", "h1", "h2", 25, True),
    Scenario("Part 1: outside client to an ordinary campus host", "outhost", "h1", 25, False),
    Scenario("  twin: same hosts, another port", "outhost", "h1", 2525, True),
    Scenario("Part 1: outside client to the relay (gateway)", "outhost", "relay", 25, True),
    # dept has no outbound exception, yet its replies (from port 25) leave campus.
    Scenario("Part 1: outside client to the departmental mail system (inbound exception)", "outhost", "dept", 25, True),
    Scenario("Part 1: outside client to an outbound-only exception", "outhost", "bigmail", 25, False),
    Scenario("Part 1: outside mail server to another ordinary host", "outmx", "h2", 25, False),
    Scenario("transit: outside to outside is not campus mail", "outhost", "outmx", 25, True),
    Scenario("UDP to port 25 is not SMTP", "outhost", "h1", 25, True, proto="udp"),
    Scenario("forged campus source arriving on the uplink", "outhost", "h2", 25, False, source="forged"),
    Scenario("  twin: same forged source, another port", "outhost", "h2", 2525, True, source="forged"),
    Scenario("Part 2: a campus host sending from an address no campus prefix holds", "h1", "outmx", 25, False,
             source="unlisted"),
    Scenario("  twin: same source, another port", "h1", "outmx", 2525, True, source="unlisted"),
]

MB = 1024 * 1024
RELAY_SIZE_LIMIT = 50 * MB  # the ITS-run relay's limit, in the policy's words
# host -> its SMTP server (mininet/mailserver.py): the domains it takes mail
# for, its size limit, and for the relay, who may relay and where mail goes.
MAIL_SERVERS = {
    "outmx": dict(domains=["example.org"], max_size=100 * MB),
    "relay": dict(domains=["campus.example.edu"], max_size=RELAY_SIZE_LIMIT,
                  relay_for=["10.20.0.0/16", "fd00:20::/48"], routes={"example.org": "198.51.100.25"}),
    "dept": dict(domains=["physics.example.edu"], max_size=100 * MB),
    "bigmail": dict(domains=["imaging.example.edu"], max_size=100 * MB),
    # An ordinary host running a mail server nobody registered: the kind of
    # host the policy is about (open relays, infected machines).
    "h1": dict(domains=["h1.campus.example.edu"], max_size=100 * MB),
    "h2": dict(domains=["h2.campus.example.edu"], max_size=100 * MB),
}


class CampusHost(Host):
    """A host ready for TCP over OVS's userspace datapath, IPv4 and IPv6."""

    def config(self, ip6=None, **params):
        result = super().config(**params)
        intf = self.defaultIntf()
        # With the userspace datapath, packets from a veth with TX checksum
        # offload reach the peer with a bad TCP checksum: ping works, TCP hangs.
        self.cmd(f"ethtool -K {intf} tx off")
        # Addresses from several ranges share one segment: route everything
        # on-link and let ARP / neighbour discovery find the peer.
        self.cmd(f"ip route replace default dev {intf}")
        if ip6:
            self.cmd(f"sysctl -qw net.ipv6.conf.{intf}.disable_ipv6=0")
            self.cmd(f"ip -6 addr add {ip6}/{PREFIX_LENGTH[6]} dev {intf} nodad")
            self.cmd(f"ip -6 route replace default dev {intf}")
        return result


class CampusTopo(Topo):
    def build(self):
        border = self.addSwitch("s1", dpid=f"{BORDER_DPID:016x}")
        campus = self.addSwitch("s2", dpid=f"{2:016x}")
        internet = self.addSwitch("s3", dpid=f"{3:016x}")
        # The uplink must be port 1 of the border switch: policy.yaml says so.
        self.addLink(border, internet, port1=UPLINK_PORT)
        self.addLink(border, campus, port1=UPLINK_PORT + 1)
        for name, (ip4, ip6, _role) in HOST_ADDRESSES.items():
            host = self.addHost(name, cls=CampusHost, ip=f"{ip4}/{PREFIX_LENGTH[4]}", ip6=ip6)
            self.addLink(host, internet if name in OUTSIDE_HOSTS else campus)


topos = {"campus": CampusTopo}
hosts = {"campushost": CampusHost}
