"""Several controllers on etcd: the lease, the master keys, and the changes
other replicas make (docs/ha.md).

Replicas is the room for what a controller does because it is one of
several, none of it per switch (each switch's role is settled by its agent,
ryu_apps/agent.py, with the mastership kept here):

* the lease is refreshed every third of its life; when it is lost, every
  agent that was master stops writing at once (agents ask `lease_ok`, which
  lapses by this controller's own clock) and settles its role again;
* master keys are watched: a switch whose master went is claimed again by
  every replica it is connected to, one whose key another replica took is
  this one's no more;
* exceptions other replicas saved arrive by an etcd watch and go through
  the same change path as this controller's own (app.change, source
  "replica"), not confirmed on switches another replica masters. A watch
  whose member stops answering is made again on another member, from the
  revision last applied: nothing is missed.

Its loops never stop: every failure is logged and retried with backoff.
"""
import logging
import time

from smtp_border.trail import Actor

LOG = logging.getLogger("smtp_border.replicas")
# How often the etcd member a watch streams from is checked (its stream ends
# silently when it dies).
WATCH_CHECK_SECONDS = 2.0


class Replicas:
    def __init__(self, app, shared, mastership):
        self.app = app
        self.hub = app.hub
        self.shared = shared  # smtp_border.etcdstate.EtcdState
        self.mastership = mastership  # smtp_border.etcdstate.Mastership

    def start(self):
        for loop in (self._watch_loop, self._lease_loop, self._masters_loop):
            self.hub.spawn(loop)
        return self

    def _lease_loop(self):
        """Refresh the lease every third of its life. Lost: stop writing at
        once to every switch we were master of, and settle each again."""
        mastership = self.mastership
        while True:
            self.hub.sleep(mastership.ttl / 3)
            asked = time.monotonic()
            refreshed = mastership.refresh()
            took = time.monotonic() - asked
            if took > mastership.ttl / 3:
                LOG.warning("smtp-border: refreshing the etcd lease took %.1f s", took)
            agents = list(self.app.switches.values())
            if refreshed or not any(a.role == "master" for a in agents):
                continue
            # (Writes stopped already: agents ask lease_ok, which lapses by our own clock.)
            LOG.error("smtp-border: lost the etcd lease: no longer master of any switch; not writing until"
                      " mastership is settled again")
            for agent in agents:
                if agent.role == "master":
                    agent.role = None
                    agent.unsynced("lost the etcd lease; settling mastership again")

    def _masters_loop(self):
        """Master keys as they change: a switch whose master went (its key
        deleted: lease lapsed, or released) is claimed again by every replica
        it is connected to; one whose key another replica took is ours no more."""
        retry = self.app.timing.retry_min
        while True:
            try:
                events, cancel = self.mastership.watch()
            except Exception as err:
                LOG.error("smtp-border: cannot watch mastership in etcd (retrying): %s", err)
                self.hub.sleep(retry * 4)
                continue
            guard = self.hub.spawn(self._watch_guard, self.mastership, cancel)
            try:
                for dpid, master in events:
                    agent = self.app.switches.get(dpid)
                    if agent is None:
                        continue
                    if master is None:
                        LOG.info("smtp-border: switch %016x: its master key is gone (lease lapsed or released)", dpid)
                    if master is None or (agent.role == "master" and master != self.mastership.replica):
                        agent.role = None
                        agent.unsynced("master went; settling mastership again")
            except Exception:
                LOG.exception("smtp-border: mastership watch failed; watching again")
            finally:
                cancel()
                guard.kill()
            self.hub.sleep(retry)

    def _watch_loop(self):
        """Changes other controllers saved in etcd, applied here as they come
        (Border.sync) and delivered to this controller's switches."""
        timing = self.app.timing
        delay = timing.retry_min
        while True:
            try:
                events, cancel = self.shared.watch()
            except Exception as err:  # StateUnavailable, or anything else: never stop watching
                LOG.error("smtp-border: cannot watch etcd for other controllers' changes (retrying in %.1f s): %s",
                          delay, err)
                self.hub.sleep(delay)
                delay = min(timing.retry_max, delay * 2)
                continue
            delay = timing.retry_min
            guard = self.hub.spawn(self._watch_guard, self.shared, cancel)
            try:
                for event in events:
                    self._remote([event])
            except Exception:  # one bad event must not end the watch for good
                LOG.exception("smtp-border: applying a change from etcd failed; watching again")
            finally:
                cancel()
                guard.kill()
            self.hub.sleep(timing.retry_min)

    def _watch_guard(self, watched, cancel):
        while watched.watch_alive():
            self.hub.sleep(WATCH_CHECK_SECONDS)
        LOG.warning("smtp-border: the etcd member the watch streams from stopped answering (or the watch ended);"
                    " watching again")
        cancel()

    def _remote(self, events):
        # Not confirmed on the switches the other controller masters: that
        # one answers for them, and a later change of its own (already on
        # its switches) would make this wait in vain. (The fleet benchmark found it.)
        # Its log line and trail line (ryu_apps/history.py) name it: "change by
        # replica from <etcd> (sync): added ...".
        self.app.change(lambda border: border.sync(events), confirm=False, source="replica",
                        actor=Actor("replica", peer=self.shared.path), action="sync")
