"""Two real ryu-manager replicas sharing their API exceptions in a real
three-member etcd cluster (SMTP_POLICY_ETCD): a change on either is seen on
the other, two at once on the same address give one 201 and one 409, the
loss of a member changes nothing, the loss of quorum answers 503 with the
reason, and recovery needs nobody."""
import shutil
import threading
import time

import pytest

from conftest import ROOT, wait_for
from etcdcluster import EtcdCluster
from lab import Controller

H1 = "10.20.3.10"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as running:
        yield running


@pytest.fixture(scope="module")
def replicas(cluster, tmp_path_factory):
    directory = tmp_path_factory.mktemp("replicas")
    shutil.copy(ROOT / "policy.yaml", directory / "policy.yaml")
    started = []
    try:
        for name in ("a", "b"):
            controller = Controller(directory / "policy.yaml", directory / f"ryu-{name}.log",
                                    env={"SMTP_POLICY_ETCD": cluster.endpoints})
            started.append(controller.start())
        yield started
    finally:
        for controller in started:
            controller.stop()


def exceptions_on(controller):
    code, body = controller.api("GET", "/smtp/v1/exceptions")
    assert code == 200, body
    return {e["address"]: e for e in body["exceptions"] if e["source"] == "api"}


def seen_on(controller, address, present=True, timeout=10.0):
    return wait_for(lambda: (address in exceptions_on(controller)) == present, timeout)


def test_a_change_on_either_replica_is_in_force_on_both(replicas):
    a, b = replicas
    code, body = a.api("POST", "/smtp/v1/exceptions", {"address": H1, "direction": "outbound", "grounds": "message-size", "needs_message_size": "200MB", "reason": "on a"})
    assert code in (201, 202), body
    started = time.monotonic()
    assert seen_on(b, f"{H1}/32")
    print(f"seen on the other replica after {1000 * (time.monotonic() - started):.0f} ms")
    assert exceptions_on(b)[f"{H1}/32"]["reason"] == "on a"
    # Who granted it and when travel with it through etcd (issue 24).
    mine = exceptions_on(b)[f"{H1}/32"]
    assert (mine["created_by"], mine["created_at"]) == ("loopback-dev", body["created_at"]) and body["created_at"]
    assert " by replica from " in b.log()  # one line for the change that came through etcd
    assert f"(sync): added {H1}/32 outbound" in b.log()
    code, _ = b.api("DELETE", f"/smtp/v1/exceptions/{body['id']}")
    assert code in (200, 202)
    assert seen_on(a, f"{H1}/32", present=False)


def test_two_replicas_adding_the_same_address_at_once_give_201_and_409(replicas):
    a, b = replicas
    address = "10.20.3.11"
    answers = {}
    barrier = threading.Barrier(2)

    def post(name, controller):
        barrier.wait()
        answers[name] = controller.api("POST", "/smtp/v1/exceptions",
                                       {"address": address, "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": f"from {name}"})

    threads = [threading.Thread(target=post, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    codes = sorted(code for code, _ in answers.values())
    assert codes in ([201, 409], [202, 409]), answers
    winner = next(name for name, (code, _) in answers.items() if code != 409)
    for controller in (a, b):
        assert wait_for(lambda: exceptions_on(controller).get(f"{address}/32", {}).get("reason") == f"from {winner}", 10)
    exception_id = next(body for code, body in answers.values() if code != 409)["id"]
    assert a.api("DELETE", f"/smtp/v1/exceptions/{exception_id}")[0] in (200, 202)
    assert seen_on(b, f"{address}/32", present=False)


def test_member_loss_is_invisible_quorum_loss_is_503_and_recovery_is_automatic(replicas, cluster):
    a, b = replicas
    first, second = cluster.names[:2]
    cluster.kill(first)
    try:
        code, body = a.api("POST", "/smtp/v1/exceptions", {"address": "10.20.3.12", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB",
                                                            "reason": "one member down"})
        assert code in (201, 202), body
        assert seen_on(b, "10.20.3.12/32")
        cluster.kill(second)
        try:
            code, body = a.api("POST", "/smtp/v1/exceptions", {"address": "10.20.3.13", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB",
                                                                "reason": "no quorum"})
            assert code == 503 and "etcd" in body["error"], body
            assert "10.20.3.13/32" not in exceptions_on(a)
            # Reads still answer, from what the replica holds.
            assert "10.20.3.12/32" in exceptions_on(a)
        finally:
            cluster.start(second)
    finally:
        cluster.start(first)
    cluster.wait_healthy()
    code, body = b.api("POST", "/smtp/v1/exceptions", {"address": "10.20.3.14", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB",
                                                        "reason": "quorum back"})
    assert code in (201, 202), body
    assert seen_on(a, "10.20.3.14/32")
    # Whatever etcd did with the change in doubt, both replicas agree with it.
    assert wait_for(lambda: exceptions_on(a).keys() == exceptions_on(b).keys(), 10)
