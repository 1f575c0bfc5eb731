"""One connection's channel (ryu_apps/channel.py), alone: liveness, rate
limits, floods and oversized replies, with an injected clock. Nothing here
sleeps to make time pass; every "closed" has its "kept open" twin."""
import logging

import eventlet
import pytest

from ryu_apps.channel import Channel, Limits, SwitchFailed
from ryu_apps.framework import hub, ofproto_v1_3, ofproto_v1_3_parser

OFP, PARSER = ofproto_v1_3, ofproto_v1_3_parser


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Peer:
    """The least a Datapath offers a channel: ids, a send that records, close."""
    ofproto, ofproto_parser = OFP, PARSER

    def __init__(self):
        self.id, self.xid, self.sent, self.closed = 1, 0, [], False

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)

    def send(self, data):
        self.sent.append(bytes(data))
        return not self.closed

    def close(self):
        self.closed = True


@pytest.fixture
def clock():
    return Clock()


def channel_for(clock, **limits):
    return Channel(Peer(), hub, Limits(**limits), clock=clock, name="0000000000000001")


def test_a_silent_switch_is_sent_an_echo_then_closed_and_its_waiters_fail(clock):
    channel = channel_for(clock, echo_idle=5, echo_timeout=3)
    assert channel.liveness() is None
    clock.now += 5
    assert channel.keep_alive() and len(channel.dp.sent) == 1  # the echo request
    clock.now += 2.9
    assert channel.keep_alive() and not channel.dp.closed  # not late yet
    waiting = eventlet.spawn(channel.exchange, [], [PARSER.OFPBarrierRequest(channel.dp)], 60)
    hub.sleep(0)
    clock.now += 0.1
    assert not channel.keep_alive() and channel.dp.closed and channel.closed.startswith("silent for 8 s")
    with pytest.raises(SwitchFailed, match="silent for 8 s"):
        waiting.wait()
    with pytest.raises(SwitchFailed, match="connection closed"):
        channel.exchange([], [PARSER.OFPBarrierRequest(channel.dp)])


def test_a_switch_that_answers_the_echo_stays(clock):
    channel = channel_for(clock, echo_idle=5, echo_timeout=3)
    clock.now += 5
    channel.keep_alive()
    clock.now += 2
    reply = PARSER.OFPEchoReply(channel.dp, data=b"smtp-border")
    reply.xid = channel.dp.xid
    channel.answered(reply)
    clock.now += 4.9  # idle again, but less than echo_idle since the reply
    assert channel.keep_alive() and not channel.dp.closed and len(channel.dp.sent) == 1


def error(dp, xid=0):
    msg = PARSER.OFPErrorMsg(dp, type_=OFP.OFPET_BAD_REQUEST, code=OFP.OFPBRC_BAD_TYPE, data=b"")
    msg.xid = xid
    return msg


def test_errors_over_the_limit_are_dropped_counted_and_said_once_an_interval(clock, caplog):
    channel = channel_for(clock, errors_per_second=10, errors_burst=20, log_interval=60, flood_close_after=10**6)
    described = []
    with caplog.at_level(logging.WARNING, logger="smtp_border.channel"):
        for _ in range(500):
            channel.error(error(channel.dp), lambda m: described.append(m) or "described")
        assert len(described) == 20 and channel.dropped["errors"] == 480
        clock.now += 1  # ten more tokens
        for _ in range(500):
            channel.error(error(channel.dp), lambda m: described.append(m) or "described")
        assert len(described) == 30
        lines = [r for r in caplog.records if "over the limit" in r.getMessage()]
        assert len(lines) == 1  # one line for 970 dropped errors in one interval
        clock.now += 60
        channel.error(error(channel.dp), lambda m: "described")
        channel.error(error(channel.dp), lambda m: "described")
        assert len([r for r in caplog.records if "over the limit" in r.getMessage()]) <= 2
    assert not channel.dp.closed


def test_an_error_that_answers_an_exchange_is_never_dropped(clock):
    """The limit is for errors nobody asked for; one that fails our own
    request always reaches it, however many others came before."""
    channel = channel_for(clock, errors_per_second=1, errors_burst=1)
    for _ in range(10):
        channel.error(error(channel.dp), lambda m: "x")
    barrier = PARSER.OFPBarrierRequest(channel.dp)
    waiting = eventlet.spawn(channel.exchange, [], [barrier], 60)
    hub.sleep(0)
    channel.error(error(channel.dp, barrier.xid), lambda m: "refused")
    with pytest.raises(SwitchFailed, match="refused"):
        waiting.wait()


def test_a_flood_past_the_limit_closes_the_connection(clock):
    channel = channel_for(clock, packet_ins_per_second=100, packet_ins_burst=200, flood_close_after=1000)
    allowed = 0
    for _ in range(1199):
        if channel.allow("packet_ins"):
            allowed += 1
        else:
            channel.flooding("packet_ins")
    assert allowed == 200 and not channel.dp.closed  # 999 over the limit: kept (its twin)
    assert not channel.allow("packet_ins")
    channel.flooding("packet_ins")
    assert channel.dp.closed and channel.closed.startswith("flooding: 1000 packet-ins")


def flow_stats_part(dp, xid, size, more=True):
    msg = PARSER.OFPFlowStatsReply(dp, body=[], flags=OFP.OFPMPF_REPLY_MORE if more else 0)
    msg.xid, msg.msg_len = xid, size
    return msg


def test_a_reply_past_its_limit_closes_the_connection_and_keeps_nothing_more(clock):
    channel = channel_for(clock, min_reply_bytes=1024 * 1024)
    request = PARSER.OFPFlowStatsRequest(channel.dp)
    waiting = eventlet.spawn(channel.exchange, [], [request], 60)
    hub.sleep(0)
    parts = 0
    while not channel.dp.closed and parts < 10_000:
        channel.multipart(flow_stats_part(channel.dp, request.xid, 64 * 1024), more=True)
        parts += 1
    assert parts == 17  # 16 parts of 64 KiB fill the 1 MiB; the 17th passes it
    assert channel.dropped["oversized_replies"] == 1 and "multipart reply passed 1 MiB" in channel.closed
    with pytest.raises(SwitchFailed, match="multipart reply passed"):
        waiting.wait()


def test_a_reply_within_its_limit_is_gathered_whole(clock):
    channel = channel_for(clock, min_reply_bytes=1024 * 1024)
    channel.reply_limit = Limits(min_reply_bytes=1024 * 1024).max_reply_bytes(5000)  # 2 x 5000 x 400 bytes
    request = PARSER.OFPFlowStatsRequest(channel.dp)
    waiting = eventlet.spawn(channel.exchange, [], [request], 60)
    hub.sleep(0)
    for _ in range(59):
        channel.multipart(flow_stats_part(channel.dp, request.xid, 64 * 1024), more=True)
    channel.multipart(flow_stats_part(channel.dp, request.xid, 1000, more=False), more=False)
    assert waiting.wait() == {request.xid: []} and not channel.dp.closed
