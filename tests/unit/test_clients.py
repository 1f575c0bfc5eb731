"""Named API clients (smtp_border/clients.py) and the trail
(smtp_border/trail.py): who may do what, and who did what."""
import datetime
import json

import netaddr
import pytest
from webob import Request

from ryu_apps import auth, rest
from smtp_border.clients import Clients, ClientsError, digest, new_token, parse_clients
from smtp_border.policy import Direction, MailException
from smtp_border.trail import Trail


@pytest.fixture
def env(monkeypatch):
    for name in (rest.TOKEN_ENV, rest.READ_TOKEN_ENV, rest.TOKENS_FILE_ENV, rest.LOOPBACK_DEV_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def tokens_file(tmp_path, *lines, mode=0o640):
    path = tmp_path / "tokens"
    path.write_text("# NAME SCOPE HASH\n" + "\n".join(lines) + "\n")
    path.chmod(mode)
    return path


def change_request(token, method="POST", content_type="application/json"):
    req = Request.blank("/smtp/v1/exceptions", method=method, remote_addr="192.0.2.7")
    req.host = "controller.example.edu:8080"
    if content_type:
        req.content_type = content_type
    req.headers["Authorization"] = f"Bearer {token}"
    return req


def test_token_new_prints_a_token_whose_line_names_the_client(tmp_path):
    token, line = new_token("alice", "read")
    assert line == f"alice read sha256:{digest(token)}" and token not in line and len(token) >= 40
    (client,) = parse_clients(line, "tokens")
    assert (client.name, client.scope, client.writes) == ("alice", "read", False)
    with pytest.raises(ClientsError, match="is not a client name"):
        new_token("alice smith")


def test_each_named_client_is_who_it_says_and_a_reader_changes_nothing(env, tmp_path):
    alice, alice_line = new_token("alice", "write")
    grafana, grafana_line = new_token("grafana", "read")
    env.setenv(rest.TOKENS_FILE_ENV, str(tokens_file(tmp_path, alice_line, grafana_line)))
    env.setenv(rest.TOKEN_ENV, "the-old-shared-token")  # still works, as the client admin
    assert rest.authorise(change_request(alice)) == "alice"
    assert rest.authorise(change_request("the-old-shared-token")) == "admin"
    assert rest.authorise(change_request(grafana, "GET", None), rest.OFFENDERS) == "grafana"
    with pytest.raises(rest.HttpError) as refused:
        rest.authorise(change_request(grafana))
    assert refused.value.status == 403 and "'grafana' may read, not change" in str(refused.value)
    for wrong in ("", "alice", digest(alice), alice + "x"):
        with pytest.raises(rest.HttpError) as refused:
            rest.authorise(change_request(wrong))
        assert refused.value.status == 401


def test_the_tokens_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_last(env, tmp_path):
    alice, alice_line = new_token("alice")
    bob, bob_line = new_token("bob")
    path = tokens_file(tmp_path, alice_line)
    clients = Clients({rest.TOKENS_FILE_ENV: str(path)})
    assert clients.who(alice).name == "alice" and clients.who(bob) is None
    path.write_text(f"{alice_line}\n{bob_line}\n")  # bob added: no restart
    assert clients.who(bob).name == "bob"
    path.write_text(f"{alice_line}\nbob write sha256:nothex\n")  # broken: keeps alice and bob
    assert clients.who(bob).name == "bob" and clients.who(alice).name == "alice"
    path.write_text(f"{alice_line}\n")  # bob revoked
    assert clients.who(bob) is None and clients.who(alice).name == "alice"


@pytest.mark.parametrize("lines, mode, words", [
    (["alice write sha256:" + "0" * 64], 0o644, "others may read it (mode 644)"),
    (["alice write " + "0" * 64], 0o600, "expected sha256: and 64 lowercase hex digits"),
    (["alice admin sha256:" + "0" * 64], 0o600, "scope 'admin' is not write or read"),
    (["alice write sha256:" + "0" * 64, "alice read sha256:" + "1" * 64], 0o600, "client 'alice' is listed twice"),
    (["alice write"], 0o600, "expected NAME SCOPE sha256:HEX (three words), got 2"),
])
def test_a_tokens_file_that_cannot_be_used_is_refused_naming_line_and_fix(env, tmp_path, lines, mode, words):
    path = tokens_file(tmp_path, *lines, mode=mode)
    with pytest.raises(ClientsError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Clients({rest.TOKENS_FILE_ENV: str(path)})


def test_the_trail_keeps_who_changed_what_and_reads_back_since_a_time(tmp_path):
    trail = Trail(tmp_path / "policy.changes.jsonl")
    grant = MailException(netaddr.IPNetwork("10.20.3.10/32"), Direction.INBOUND, "r", source="api")
    t0 = datetime.datetime(2026, 12, 6, 10, 0, tzinfo=datetime.timezone.utc)
    trail.record(t0, "req1", "alice", "192.0.2.7", "api", "add", added=(grant,), result="enforced")
    trail.record(t0 + datetime.timedelta(hours=1), "req2", "bob", "192.0.2.8", "api", "remove", removed=(grant,),
                 result="pending", pending=["0000000000000001"])
    with open(trail.path, "a") as stream:
        stream.write('{"torn line')  # a crash mid-write: skipped
    everything = trail.since()
    assert [(e["client"], e["action"], e["added_count"], e["removed_count"]) for e in everything] == [
        ("alice", "add", 1, 0), ("bob", "remove", 0, 1)]
    assert everything[0]["added"] == [{"id": grant.id, "address": "10.20.3.10/32", "direction": "inbound"}]
    later = trail.since(datetime.datetime(2026, 12, 6, 5, 30, tzinfo=datetime.timezone(-datetime.timedelta(hours=5))))
    assert [e["request"] for e in later] == ["req2"]  # 05:30-05:00 is 10:30 UTC
    assert [e["request"] for e in trail.since(limit=1)] == ["req2"]
    assert json.loads(trail.path.read_text().splitlines()[0])["at"] == "2026-12-06T10:00:00Z"


def test_the_peer_is_the_socket_unless_a_named_proxy_forwards_it(env):
    """X-Forwarded-For is believed only from a proxy named in
    SMTP_POLICY_TRUSTED_PROXIES: anyone else could write any address there."""
    def peer(remote, forwarded=None):
        req = Request.blank("/smtp/v1/exceptions", remote_addr=remote)
        if forwarded:
            req.headers["X-Forwarded-For"] = forwarded
        return auth.peer_of(req)

    assert peer("192.0.2.7", "198.51.100.1") == "192.0.2.7"  # no proxy named: the header is ignored
    env.setenv(auth.TRUSTED_PROXIES_ENV, "127.0.0.1, ::1")
    assert peer("127.0.0.1", "203.0.113.5, 192.0.2.10") == "192.0.2.10 (via 127.0.0.1)"  # the proxy's own entry
    assert peer("192.0.2.7", "198.51.100.1") == "192.0.2.7"  # not a named proxy
    assert peer("127.0.0.1", "not-an-address") == "127.0.0.1"
    req = Request.blank("/", remote_addr="127.0.0.1")
    req.headers["X-Request-Id"] = "abc-123"
    assert auth._request_id(req) == "abc-123"
    req.headers["X-Request-Id"] = "bad id\nforged"
    assert auth._request_id(req) != "bad id\nforged" and len(auth._request_id(req)) == 12


def test_a_change_etcd_may_still_commit_is_not_logged_as_refused(caplog):
    import logging

    from ryu_apps import history
    from smtp_border.etcdstate import StateInDoubt
    from smtp_border.store import Conflict
    from smtp_border.trail import Actor

    with caplog.at_level(logging.WARNING, logger="smtp_border.changes"):
        history.refused(Actor("alice", "192.0.2.7", "r1"), "add", StateInDoubt("etcd did not answer the commit"))
        history.refused(Actor("alice", "192.0.2.7", "r2"), "add", Conflict("already exists\nforged"))
    doubt, refused = [r.getMessage() for r in caplog.records]
    assert "change r1 by alice from 192.0.2.7 (add) NOT CONFIRMED, etcd may still commit it" in doubt
    assert refused.endswith("(add) REFUSED, nothing changed: already exists forged")  # one line, always
