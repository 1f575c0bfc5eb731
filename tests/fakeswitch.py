"""A fake OpenFlow 1.3 switch for testing the app's delivery logic without Mininet.

In the spirit of Faucet's clib/fakeoftable.py, but fed the app's own bytes:
FakeSwitch stands where Ryu's Datapath stands (id, ofproto, set_xid, send),
parses every byte string the app sends back into messages (flow mods with
Ryu's own parser; bundle, barrier, statistics and meter requests, which Ryu
does not parse, by their OpenFlow 1.3 layouts), keeps the flow tables and
meters, and answers through the app's real event handlers, as Ryu would.

It can be told to misbehave: refuse bundles, answer flow mods with an error,
swallow barriers, lose its flows, or have flows added behind the app's back.
"""
import struct

from ryu_apps.framework import (
    DEAD_DISPATCHER, MAIN_DISPATCHER, ofp_event, ofproto_common, ofproto_parser, ofproto_v1_3, ofproto_v1_3_parser,
)

from ryu_apps import openflow
from ryu_apps.framework import hub
import switchshapes

OFP = ofproto_v1_3
PARSER = ofproto_v1_3_parser
_EXPERIMENTER = struct.Struct("!II")
_BUNDLE_CTRL = struct.Struct("!IHH")
_BUNDLE_ADD = struct.Struct("!IxxH")
_MULTIPART = struct.Struct(OFP.OFP_MULTIPART_REQUEST_PACK_STR)
_FLOW_STATS_REQUEST = struct.Struct(OFP.OFP_FLOW_STATS_REQUEST_0_PACK_STR)
_METER_MOD = struct.Struct(OFP.OFP_METER_MOD_PACK_STR)


class Refused(Exception):
    def __init__(self, type_, code):
        super().__init__(f"{type_}/{code}")
        self.type_, self.code = type_, code


def match_key(match):
    return tuple(sorted((name, str(value)) for name, value in match.items()))


class FakeSwitch:
    def __init__(self, dpid, bundles=True, fragment_modes=True, shape="open_vswitch", max_meters=200_000,
                 n_tables=254):
        self.id = dpid
        self.ofproto = OFP
        self.ofproto_parser = PARSER
        self.xid = 0
        self.app = None
        self.alive = False
        self.bundles = bundles
        self.table = {}  # (table, priority, match key) -> OFPFlowStats
        self.meters = {}  # meter id -> packets per second
        self._bundles = {}  # bundle id -> queued messages
        self.log = []  # every message received: (type name, parsed object or bytes)
        self.refuse_flow_mods = 0  # the next N flow mods fail (OFPET_FLOW_MOD_FAILED)
        self.refuse_code = OFP.OFPFMFC_UNKNOWN  # ... with this code
        self.flow_limit = None  # per table: a full table refuses adds with OFPFMFC_TABLE_FULL
        self.swallow_barriers = 0  # the next N barriers go unanswered
        self.answers_echo = True  # False: a dead connection that never answers
        self.closed = False  # the controller closed this connection
        self.table_history = []  # the table after each flow mod applied outside a bundle
        self.config_flags = 0  # OFPC_* of the switch config: fragment handling "normal"
        self.fragment_modes = fragment_modes  # False: a switch that keeps "normal" whatever it is told
        # What it says of itself (tests/switchshapes.py); None: refuses the request.
        self.table_features = None if shape is None else switchshapes.SHAPES[shape]()
        self.max_meters = max_meters
        self.n_tables = n_tables
        # OpenFlow roles, as Open vSwitch keeps them for one connection: a
        # slave's writes are refused (OFPBRC_IS_SLAVE), a generation id
        # older than the highest seen is stale (OFPRRFC_STALE).
        self.role = "equal"
        self.generation = None
        self.async_config = None  # (packet_in, port_status, flow_removed) masks, [master, slave] each
        # A hostile or broken peer (tests/unit/test_agent.py):
        self.silent = False  # receives everything, answers nothing (a hung switch)
        self.more_forever = False  # answers a flow-stats request with REPLY_MORE parts until closed
        self.answer_later = False  # replies arrive from another green thread, as over a socket
        self.on_request = None  # called with (message type, xid) before each message is handled

    # -- the Datapath interface the app uses ------------------------------------

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send(self, data):
        if not self.alive:
            return False
        data = bytes(data)
        offset = 0
        while offset < len(data):
            version, msg_type, length, xid = ofproto_parser.header(data[offset:])
            self._receive(msg_type, xid, data[offset:offset + length])
            offset += length
        return True

    # -- what a test does ---------------------------------------------------------

    def connect(self, app):
        self.app, self.alive = app, True
        features = PARSER.OFPSwitchFeatures(self, datapath_id=self.id, n_buffers=0, n_tables=self.n_tables,
                                            auxiliary_id=0, capabilities=0)
        app._features(ofp_event.EventOFPSwitchFeatures(features))
        self._state(MAIN_DISPATCHER)

    def disconnect(self):
        self.alive = False
        self._state(DEAD_DISPATCHER)

    def close(self):
        """What Ryu's Datapath.close does, as the controller asks it."""
        self.closed = True
        self.disconnect()

    def packet_in(self, cookie, data, table_id=1, in_port=2):
        """The switch sends a packet to the controller (a sample, or a forgery)."""
        msg = PARSER.OFPPacketIn(self, buffer_id=OFP.OFP_NO_BUFFER, total_len=len(data), reason=OFP.OFPR_ACTION,
                                 table_id=table_id, cookie=cookie, match=PARSER.OFPMatch(in_port=in_port), data=data)
        self.app._packet_in(ofp_event.EventOFPPacketIn(msg))

    def rules(self):
        """The table as FlowRules (None for a flow the app would not install)."""
        return {openflow.rule_from_flow(stats) for stats in self.table.values()}

    def add_behind_the_back(self, rule_or_stats):
        stats = rule_or_stats if isinstance(rule_or_stats, PARSER.OFPFlowStats) else _stats_of(_parse_flow_mod(rule_or_stats))
        self.table[stats.table_id, stats.priority, match_key(stats.match)] = stats

    def count(self, predicate, packets, octets=None):
        """Packets hit the flows `predicate` picks (by cookie)."""
        for stats in self.table.values():
            if predicate(stats.cookie):
                stats.packet_count += packets
                stats.byte_count += packets * 60 if octets is None else octets

    def demote(self, generation):
        """Another controller became master with `generation`: as Open
        vSwitch does, this connection's master becomes a slave."""
        self.generation = generation
        if self.role == "master":
            self.role = "slave"

    def sent(self, kind):
        return [m for name, m in self.log if name == kind]

    def flood_errors(self, count):
        """Unsolicited OFPT_ERROR messages, as a hostile peer sends them."""
        for _ in range(count):
            error = PARSER.OFPErrorMsg(self, type_=OFP.OFPET_BAD_REQUEST, code=OFP.OFPBRC_BAD_TYPE, data=b"x" * 16)
            error.xid = 0
            self.app._error(ofp_event.EventOFPErrorMsg(error))
            if self.closed:
                return

    def flood_echoes(self, count):
        for _ in range(count):
            request = PARSER.OFPEchoRequest(self, data=b"x")
            request.xid = 0
            self.app._echo_request(ofp_event.EventOFPEchoRequest(request))
            if self.closed:
                return

    # -- inside -------------------------------------------------------------------

    def _answer(self, handler, event):
        if self.answer_later:
            hub.spawn(lambda: self.alive and handler(event))
        else:
            handler(event)

    def _state(self, state):
        ev = ofp_event.EventOFPStateChange(self)
        ev.state = state
        self.app._state_change(ev)

    def _receive(self, msg_type, xid, data):
        if self.on_request is not None:
            self.on_request(msg_type, xid)
        if self.silent:
            self.log.append(("ignored", msg_type))
            return
        try:
            if self.role == "slave" and msg_type in (OFP.OFPT_FLOW_MOD, OFP.OFPT_EXPERIMENTER, OFP.OFPT_METER_MOD,
                                                     OFP.OFPT_SET_CONFIG):
                self.log.append(("refused_slave", msg_type))
                raise Refused(OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_IS_SLAVE)
            if msg_type == OFP.OFPT_ROLE_REQUEST:
                self._role_request(xid, data)
            elif msg_type == OFP.OFPT_SET_ASYNC:
                masks = struct.unpack_from(OFP.OFP_ASYNC_CONFIG_PACK_STR, data, OFP.OFP_HEADER_SIZE)
                self.async_config = (masks[0:2], masks[2:4], masks[4:6])
                self.log.append(("set_async", self.async_config))
            elif msg_type == OFP.OFPT_FLOW_MOD:
                msg = ofproto_parser.msg(self, OFP.OFP_VERSION, msg_type, len(data), xid, data)
                self.log.append(("flow_mod", msg))
                self._flow_mod(msg, self.table)
                self.table_history.append(dict(self.table))
            elif msg_type == OFP.OFPT_EXPERIMENTER:
                self._experimenter(xid, data)
            elif msg_type == OFP.OFPT_BARRIER_REQUEST:
                self.log.append(("barrier", xid))
                if self.swallow_barriers:
                    self.swallow_barriers -= 1
                    return
                reply = PARSER.OFPBarrierReply(self)
                reply.xid = xid
                self._answer(self.app._reply, ofp_event.EventOFPBarrierReply(reply))
            elif msg_type == OFP.OFPT_ECHO_REQUEST:
                self.log.append(("echo", xid))
                if self.answers_echo:
                    reply = PARSER.OFPEchoReply(self, data=data[OFP.OFP_HEADER_SIZE:])
                    reply.xid = xid
                    self._answer(self.app._reply, ofp_event.EventOFPEchoReply(reply))
            elif msg_type == OFP.OFPT_MULTIPART_REQUEST:
                self._multipart(xid, data)
            elif msg_type == OFP.OFPT_GET_CONFIG_REQUEST:
                reply = PARSER.OFPGetConfigReply(self, flags=self.config_flags, miss_send_len=128)
                reply.xid = xid
                self._answer(self.app._reply, ofp_event.EventOFPGetConfigReply(reply))
            elif msg_type == OFP.OFPT_SET_CONFIG:
                flags, miss_send_len = struct.unpack_from(OFP.OFP_SWITCH_CONFIG_PACK_STR, data, OFP.OFP_HEADER_SIZE)
                self.log.append(("set_config", flags))
                if self.fragment_modes:
                    self.config_flags = flags
            elif msg_type == OFP.OFPT_METER_MOD:
                command, flags, meter_id = _METER_MOD.unpack_from(data, OFP.OFP_HEADER_SIZE)
                band_rate = struct.unpack_from("!HHII", data, OFP.OFP_HEADER_SIZE + _METER_MOD.size)[2]
                self.log.append(("meter_mod", (command, meter_id, band_rate)))
                self.meters[meter_id] = band_rate
            else:
                raise Refused(OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_TYPE)
        except Refused as err:
            error = PARSER.OFPErrorMsg(self, type_=err.type_, code=err.code, data=data[:64])
            error.xid = xid
            self._answer(self.app._error, ofp_event.EventOFPErrorMsg(error))

    def _role_request(self, xid, data):
        role, generation = struct.unpack_from(OFP.OFP_ROLE_REQUEST_PACK_STR, data, OFP.OFP_HEADER_SIZE)
        self.log.append(("role_request", (role, generation)))
        if role in (OFP.OFPCR_ROLE_MASTER, OFP.OFPCR_ROLE_SLAVE):
            # Compared as OpenFlow says: the signed difference, modulo 2**64.
            if self.generation is not None and (generation - self.generation) % 2**64 >= 2**63:
                raise Refused(OFP.OFPET_ROLE_REQUEST_FAILED, OFP.OFPRRFC_STALE)
            self.generation = generation
            self.role = "master" if role == OFP.OFPCR_ROLE_MASTER else "slave"
        reply = PARSER.OFPRoleReply(self, role=role, generation_id=self.generation or 0)
        reply.xid = xid
        self._answer(self.app._reply, ofp_event.EventOFPRoleReply(reply))

    def _table_features_reply(self, xid):
        """As a switch answers: bytes, split into messages under 64 KiB, all
        but the last flagged REPLY_MORE, each through Ryu's parser."""
        chunks = list(_table_features_chunks(self.table_features))
        for i, chunk in enumerate(chunks):
            body = b"".join(chunk)
            flags = 0 if i == len(chunks) - 1 else OFP.OFPMPF_REPLY_MORE
            data = struct.pack("!BBHIHH4x", OFP.OFP_VERSION, OFP.OFPT_MULTIPART_REPLY,
                               OFP.OFP_MULTIPART_REPLY_SIZE + len(body), xid, OFP.OFPMP_TABLE_FEATURES, flags) + body
            reply = ofproto_parser.msg(self, OFP.OFP_VERSION, OFP.OFPT_MULTIPART_REPLY, len(data), xid, data)
            self._answer(self.app._multipart_reply, ofp_event.EventOFPTableFeaturesStatsReply(reply))

    def _flow_mod(self, msg, table):
        if self.refuse_flow_mods:
            self.refuse_flow_mods -= 1
            raise Refused(OFP.OFPET_FLOW_MOD_FAILED, self.refuse_code)
        key = (msg.table_id, msg.priority, match_key(msg.match))
        if msg.command == OFP.OFPFC_ADD:
            if (self.flow_limit is not None and key not in table
                    and sum(k[0] == msg.table_id for k in table) >= self.flow_limit):
                raise Refused(OFP.OFPET_FLOW_MOD_FAILED, OFP.OFPFMFC_TABLE_FULL)
            table[key] = _stats_of(msg)
        elif msg.command == OFP.OFPFC_DELETE_STRICT:
            table.pop(key, None)
        elif msg.command == OFP.OFPFC_DELETE and not msg.match.items():
            for k in [k for k in table if msg.table_id in (OFP.OFPTT_ALL, k[0])]:
                del table[k]
        else:
            raise Refused(OFP.OFPET_FLOW_MOD_FAILED, OFP.OFPFMFC_BAD_COMMAND)

    def _experimenter(self, xid, data):
        body = data[OFP.OFP_HEADER_SIZE:]
        experimenter, exp_type = _EXPERIMENTER.unpack_from(body)
        if not self.bundles or experimenter != ofproto_common.ONF_EXPERIMENTER_ID:
            self.log.append(("refused_bundle", xid))
            raise Refused(OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_EXPERIMENTER)
        if exp_type == OFP.ONF_ET_BUNDLE_CONTROL:
            bundle_id, kind, flags = _BUNDLE_CTRL.unpack_from(body, _EXPERIMENTER.size)
            if kind == OFP.ONF_BCT_OPEN_REQUEST:
                self._bundles[bundle_id] = []
            elif kind == OFP.ONF_BCT_COMMIT_REQUEST:
                self.log.append(("bundle", self._bundles[bundle_id]))
                staged = dict(self.table)
                for msg in self._bundles.pop(bundle_id):
                    self._flow_mod(msg, staged)  # any failure leaves the table as it was
                self.table = staged
        elif exp_type == OFP.ONF_ET_BUNDLE_ADD_MESSAGE:
            bundle_id, flags = _BUNDLE_ADD.unpack_from(body, _EXPERIMENTER.size)
            inner = body[_EXPERIMENTER.size + _BUNDLE_ADD.size:]
            version, msg_type, length, inner_xid = ofproto_parser.header(inner)
            self._bundles[bundle_id].append(ofproto_parser.msg(self, version, msg_type, length, inner_xid, inner))
        else:
            raise Refused(OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_EXP_TYPE)

    def _multipart(self, xid, data):
        kind, flags = _MULTIPART.unpack_from(data, OFP.OFP_HEADER_SIZE)
        body = OFP.OFP_HEADER_SIZE + _MULTIPART.size
        if kind in (OFP.OFPMP_FLOW, OFP.OFPMP_AGGREGATE):
            table_id, out_port, out_group, cookie, mask = _FLOW_STATS_REQUEST.unpack_from(data, body)
            flows = [s for s in self.table.values()
                     if table_id in (OFP.OFPTT_ALL, s.table_id) and s.cookie & mask == cookie & mask]
            self.log.append(("flow_stats" if kind == OFP.OFPMP_FLOW else "aggregate", (table_id, cookie, mask)))
            if kind == OFP.OFPMP_FLOW and self.more_forever:
                self._more_forever(xid, flows)
                return
            if kind == OFP.OFPMP_FLOW:
                # As a switch sends them, bytes, through Ryu's message parser
                # as the app has set it up (an empty reply included).
                body = b"".join(_stats_bytes(s) for s in flows)
                data = struct.pack("!BBHIHH4x", OFP.OFP_VERSION, OFP.OFPT_MULTIPART_REPLY,
                                   OFP.OFP_MULTIPART_REPLY_SIZE + len(body), xid, OFP.OFPMP_FLOW, 0) + body
                reply = ofproto_parser.msg(self, OFP.OFP_VERSION, OFP.OFPT_MULTIPART_REPLY, len(data), xid, data)
                event = ofp_event.EventOFPFlowStatsReply
            else:
                total = PARSER.OFPAggregateStats(
                    sum(s.packet_count for s in flows), sum(s.byte_count for s in flows), len(flows))
                reply = PARSER.OFPAggregateStatsReply(self, body=total, flags=0)
                event = ofp_event.EventOFPAggregateStatsReply
        elif kind == OFP.OFPMP_TABLE_FEATURES and self.table_features is not None:
            self.log.append(("table_features", len(data)))
            self._table_features_reply(xid)
            return
        elif kind == OFP.OFPMP_METER_FEATURES and self.max_meters is not None:
            reply = PARSER.OFPMeterFeaturesStatsReply(self, body=[PARSER.OFPMeterFeaturesStats(
                max_meter=self.max_meters, band_types=1 << OFP.OFPMBT_DROP, capabilities=OFP.OFPMF_PKTPS, max_bands=1,
                max_color=0)], flags=0)
            event = ofp_event.EventOFPMeterFeaturesStatsReply
        elif kind == OFP.OFPMP_METER_CONFIG:
            reply = PARSER.OFPMeterConfigStatsReply(
                self, body=[PARSER.OFPMeterConfigStats(meter_id=m, bands=[]) for m in self.meters], flags=0)
            event = ofp_event.EventOFPMeterConfigStatsReply
        elif kind == OFP.OFPMP_METER:
            reply = PARSER.OFPMeterStatsReply(self, body=[], flags=0)
            event = ofp_event.EventOFPMeterStatsReply
        else:
            raise Refused(OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_MULTIPART)
        reply.xid = xid
        self._answer(self.app._multipart_reply, event(reply))


    def _more_forever(self, xid, flows, parts=100_000):
        """Part after part of the same flows, every one flagged REPLY_MORE,
        until the controller closes the connection (at most `parts`)."""
        body = b"".join(_stats_bytes(s) for s in flows) or _stats_bytes(next(iter(self.table.values())))
        data = struct.pack("!BBHIHH4x", OFP.OFP_VERSION, OFP.OFPT_MULTIPART_REPLY,
                           OFP.OFP_MULTIPART_REPLY_SIZE + len(body), xid, OFP.OFPMP_FLOW, OFP.OFPMPF_REPLY_MORE) + body
        for sent in range(parts):
            if self.closed or not self.alive:
                break
            reply = ofproto_parser.msg(self, OFP.OFP_VERSION, OFP.OFPT_MULTIPART_REPLY, len(data), xid, data)
            self.app._multipart_reply(ofp_event.EventOFPFlowStatsReply(reply))
        self.log.append(("more_parts_sent", sent))


def _table_features_chunks(tables, limit=60000):
    chunk, size = [], 0
    for stats in tables:
        data = bytes(stats.serialize())
        if chunk and size + len(data) > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    yield chunk


def _stats_bytes(stats):
    """An ofp_flow_stats entry for a flow, as a switch would send it."""
    buf = bytearray(OFP.OFP_FLOW_STATS_0_SIZE)
    stats.match.serialize(buf, len(buf))
    for instruction in stats.instructions:
        instruction.serialize(buf, len(buf))
    struct.pack_into(OFP.OFP_FLOW_STATS_0_PACK_STR, buf, 0, len(buf), stats.table_id, 0, 0, stats.priority,
                     stats.idle_timeout, stats.hard_timeout, stats.flags, stats.cookie, stats.packet_count,
                     stats.byte_count)
    return bytes(buf)


def _parse_flow_mod(encodable):
    encodable.set_xid(0)
    encodable.serialize()
    data = bytes(encodable.buf)
    return ofproto_parser.msg(_DESC, *ofproto_parser.header(data), data)


class _Desc:
    ofproto = OFP
    ofproto_parser = PARSER


_DESC = _Desc()


def _stats_of(flow_mod):
    """The flow entry a flow mod makes, as a switch would report it."""
    return PARSER.OFPFlowStats(
        table_id=flow_mod.table_id, duration_sec=0, duration_nsec=0, priority=flow_mod.priority,
        idle_timeout=flow_mod.idle_timeout, hard_timeout=flow_mod.hard_timeout, flags=flow_mod.flags,
        cookie=flow_mod.cookie, packet_count=0, byte_count=0, match=flow_mod.match,
        instructions=flow_mod.instructions,
    )

