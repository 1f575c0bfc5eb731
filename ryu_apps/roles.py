"""An agent's part in several controllers (docs/ha.md): its switch's
OpenFlow role, settled with the master key in etcd, and what a slave does
(it may read, not write): read its switch to tell whether the policy its
master writes is there, for answers, GET /switches and /metrics.

A mixin of ryu_apps/agent.Agent: it uses the agent's switch, channel and
timing, and the app's mastership (smtp_border/etcdstate.Mastership).
"""
import logging
import time

from ryu_apps import openflow
from ryu_apps.channel import SwitchFailed
from smtp_border.diff import diff_rules
from smtp_border.rules import with_version
from smtp_border.state import StateUnavailable

LOG = logging.getLogger("smtp_border.agent")


class Roles:
    def writes(self):
        """May this controller write to the switch? Always alone; with
        several, only as its master while the etcd lease holds."""
        mastership = self.app.mastership
        return mastership is None or (self.role == "master" and mastership.lease_ok)

    def settle_role(self):
        """Claim the switch's master key in etcd and tell the switch our role
        with the key's generation id. A switch that calls the id stale has
        seen a newer master: read the key again and settle as it says."""
        dp = self.dp
        mastership = self.app.mastership
        try:
            master, generation = mastership.claim(self.dpid)
        except StateUnavailable as err:
            self.role, self.in_sync = None, False
            self.pending = f"mastership unknown, not writing: {err}"
            raise SwitchFailed(self.pending) from None
        mine = master == mastership.replica
        if not mine and self.role == "slave" and (self.master, self.generation) == (master, generation):
            return  # nothing changed since the last look: the switch knows our role
        ofp, parser = dp.ofproto, dp.ofproto_parser
        request = parser.OFPRoleRequest(dp, ofp.OFPCR_ROLE_MASTER if mine else ofp.OFPCR_ROLE_SLAVE, generation)
        # The first role on this connection goes with its asynchronous configuration.
        self.channel.exchange([] if self.generation is not None else [_async_config(dp)], [request])
        was = self.role
        self.holds = self.holds and was == "slave"
        self.unseen = self.unseen if was == "slave" else None
        self.role, self.master, self.generation = ("master" if mine else "slave"), master, generation
        self.in_sync = False
        if mine:
            self.pending = "master now; reconciling"
        else:
            self.pending = f"slave: controller {master} is master"
            # Know its profile and flows as the master does (reads are a
            # slave's right): to confirm changes on it, and to take over.
            if self.choice is None:
                self.probe()
            self.target().flows
        if was != self.role:
            LOG.info("smtp-border: switch %016x: %s (master %s, generation %d)", self.dpid, self.role, master,
                     generation)


    def observe(self):
        """A slave's audit: read the switch (a slave's right) and note whether
        it holds the policy in force as this replica knows it. Repairs are
        its master's: this only reports (`holds`, `pending`, the flow count,
        the block counters for /metrics). Counts each time; when they match
        after a difference, the flows of the changes since it last held the
        policy (by their cookies), or every flow. The periodic full
        comparison is the master's alone (it repairs what it finds); the
        slaves' would double the dumps every switch answers."""
        desired = self.target().flows
        counted, _ = self.count(desired)
        desired = self.target().flows
        master = f"slave: controller {self.master} is master"
        if not counted:
            self.holds = False
            self.pending = (f"{master}; the switch holds {self.flow_count} flows where the policy in force has"
                            f" {len(desired)} (a change on its way, or drift its master repairs)")
            return
        if self.holds:
            return  # (a full comparison is its master's audit's: that one repairs)
        if self.unseen:
            # Held the policy before these changes: read what they touch.
            cookies = {r.cookie for d in self.unseen for r in d.add + d.delete}
            held = self.held_by_cookies(cookies)
            want = {r for r in self.target().flows if r.cookie in cookies}
            if held == want:
                self.holds, self.unseen, self.pending = True, [], None
            else:
                self.pending = (f"{master}; {len(want - held)} flows of the latest changes not yet on the switch,"
                                f" {len(held - want)} to go (a change on its way, or drift its master repairs)")
            return
        rules, foreign = self.read_flows(dump=True)
        diff = diff_rules({with_version(r, 0) for r in rules}, self.target().flows)
        self.holds = not (diff.add or diff.delete or foreign)
        self.unseen = [] if self.holds else None
        self.pending = None if self.holds else (
            f"{master}; the switch differs from the policy in force: {len(diff.add)} flows to add,"
            f" {len(diff.delete) + len(foreign)} to remove (a change on its way, or drift its master repairs)")

    def note_unseen(self, diff):
        """A slave: a change its master is to deliver, for its next audit to read."""
        self.holds = False
        if self.unseen is not None:
            self.unseen.append(diff)
            if sum(len(d) for d in self.unseen) > self.timing.max_unseen:
                self.unseen = None  # the audit compares every flow
        # Not woken: its next audit reads it. Waking every slave at every
        # change made each one claim its key in etcd and read its switch:
        # with 50 switches between two controllers, 40% of their CPU and a
        # change p50 of 144 ms against 18 ms (py-spy, bench section 9).

    def seen_on_switch(self, diff, timeout):
        """True once the switch holds the diff (its adds, none of its deletes),
        read by the cookies of the flows concerned; False after `timeout`."""
        deadline = time.monotonic() + timeout
        cookies = {r.cookie for r in diff.add + diff.delete}
        # Read again after 2 ms, then twice as long each time up to 50 ms:
        # the other controller delivers within milliseconds of its etcd watch
        # event, and a flat 50 ms made every change with two controllers
        # wait for the second reading (p50 8.6 ms -> 65 ms at 4 switches).
        pause = 0.002
        while time.monotonic() < deadline:
            try:
                held = self.held_by_cookies(cookies, timeout=max(0.05, deadline - time.monotonic()))
            except SwitchFailed:
                return False
            keys = {r.key for r in held}
            if all(r in held for r in diff.add) and not any(r.key in keys for r in diff.delete):
                return True
            self.hub.sleep(pause)
            pause = min(0.05, pause * 2)
        return False

    def held_by_cookies(self, cookies, timeout=None):
        """The switch's rules that carry these cookies, read as version 0 (a
        switch without bundles holds its policy table in either version:
        ordering.py). One flow-stats request a cookie, up to max_unseen."""
        dp = self.dp
        if len(cookies) <= self.timing.max_unseen:
            requests = [openflow.flow_stats_request(dp, cookie, 0xFFFFFFFFFFFFFFFF) for cookie in cookies]
            replies = self.channel.exchange([], requests, timeout=timeout)
            entries = [e for r in requests for body in replies[r.xid] for e in body.entries()]
        else:
            entries = self.switch_flows(timeout=timeout)
        return {with_version(e.rule, 0) for e in entries if e.rule is not None and e.cookie in cookies}


def _async_config(dp):
    """What this connection is sent in either role (OFPT_SET_ASYNC,
    OpenFlow 1.3 section 6.1.1): the defaults, except that a slave gets
    the blocked-attempt samples too. The block flows send them to
    "the controller", which Open vSwitch reads as every connection
    whose configuration asks; by default only the master's does, and
    each replica's GET /blocked would hold only its own switches'
    attempts. Masks: [master or equal, slave]."""
    ofp = dp.ofproto
    packet_in = 1 << ofp.OFPR_NO_MATCH | 1 << ofp.OFPR_ACTION
    port_status = 1 << ofp.OFPPR_ADD | 1 << ofp.OFPPR_DELETE | 1 << ofp.OFPPR_MODIFY
    flow_removed = (1 << ofp.OFPRR_IDLE_TIMEOUT | 1 << ofp.OFPRR_HARD_TIMEOUT | 1 << ofp.OFPRR_DELETE
                    | 1 << ofp.OFPRR_GROUP_DELETE)
    return dp.ofproto_parser.OFPSetAsync(dp, [packet_in, 1 << ofp.OFPR_ACTION], [port_status, port_status],
                                         [flow_removed, 0])


def refused_as_slave(ofp, codes):
    """The switch refused a write because we are slave, or our role as stale."""
    return any(code == (ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE) or code[0] == ofp.OFPET_ROLE_REQUEST_FAILED
               for code in codes)
