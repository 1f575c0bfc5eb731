"""A real browser on the controller host, on a hostile page: headless
Chromium (Debian's package) loads a page that tries to change the policy
through the REST API on loopback, and nothing changes.

The controller runs in the development mode (no token: changes from loopback
clients), the most exposed one. The attacks:

* DNS rebinding: the page comes from http://rebound.example:<API port>/,
  which the browser resolves to 127.0.0.2, where a small server serves it
  and then, as a rebound name would, passes the page's later requests to the
  API on 127.0.0.1 unchanged. To the browser these are same-origin requests
  (it sends JSON freely and may read the answers); to the API they come from
  a loopback client and name the Host `rebound.example`.
* Cross-site requests to http://127.0.0.1:<API port>/ that need no
  preflight: a no-cors fetch with a text/plain body holding JSON, and a form
  posted with enctype text/plain (into an iframe, so the page stays).
* A cross-site fetch with a JSON body, which needs a preflight that the API
  never grants.

Its allowed twin: the same change from a loopback client naming the
loopback Host (as curl or the CLI does) is accepted.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import threading

import pytest

from chromium import Chromium
from conftest import ROOT
from lab import Controller
from smtp_border.version import version

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs the controller as the other integration tests do"),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium package is not installed"),
]
CHANGE = {"address": "10.20.0.0/24", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "a hostile page"}

PAGE = """<!doctype html><html><body><pre id="log"></pre>
<iframe name="sink" style="display:none"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink" action="http://127.0.0.1:API/smtp/v1/exceptions">
<input type="hidden" name='{"address": "10.20.0.0/24", "direction": "both", "grounds": "message-size", "needs_message_size": "200MB", "reason": "form", "x": "' value='"}'>
</form>
<script>
const change = JSON.stringify(CHANGE);
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
async function attempt(name, url, init) {
  try {
    const answer = await fetch(url, init);
    log(name + ": " + answer.status + " " + (answer.type === "opaque" ? "(opaque)" : await answer.text()).trim());
  } catch (err) {
    log(name + ": refused by the browser: " + err);
  }
}
(async () => {
  await attempt("rebound-json", "/smtp/v1/exceptions",
                {method: "POST", headers: {"Content-Type": "application/json"}, body: change});
  await attempt("rebound-read", "/smtp/v1/blocked", {});
  await attempt("rebound-reload", "/smtp/v1/reload", {method: "POST", headers: {"Content-Type": "application/json"}});
  await attempt("no-cors-text", "http://127.0.0.1:API/smtp/v1/exceptions",
                {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: change});
  await attempt("cors-json", "http://127.0.0.1:API/smtp/v1/exceptions",
                {method: "POST", headers: {"Content-Type": "application/json"}, body: change});
  document.getElementById("form").submit();
  await new Promise((done) => setTimeout(done, 1000));
  log("done");
})();
</script></body></html>
"""


class RebindingServer:
    """Serves the hostile page on 127.0.0.2:<port>; passes every other
    request, bytes unchanged, to the API on 127.0.0.1:<port>: what the API
    sees after a DNS name is rebound to loopback. Connections are bounded by
    the test's short life; every socket is closed on stop()."""

    def __init__(self, port, page):
        self.port, self.page = port, page.encode()
        self.listener = socket.create_server(("127.0.0.2", port))
        self.sockets = [self.listener]
        self.forwarded = []  # request heads passed on to the API
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            head = client.recv(65536)
            if head.startswith(b"GET / ") or head.startswith(b"GET /favicon"):
                body = self.page if head.startswith(b"GET / ") else b""
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body) + body)
                return
            self.forwarded.append(head.split(b"\r\n\r\n")[0].decode(errors="replace"))
            upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            self.sockets.append(upstream)
            upstream.sendall(head)
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            _pipe(client, upstream)
        except OSError:
            pass

    def stop(self):
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


def _pipe(source, target):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def controller(tmp_path):
    policy = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "policy.yaml", policy)
    # No token: development mode. The HTTP access log, off by default, in a file of its own.
    running = Controller(policy, tmp_path / "ryu-manager.txt", env={"SMTP_POLICY_ACCESS_LOG": str(tmp_path / "access.log")})
    running.access_log = tmp_path / "access.log"
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_a_hostile_page_in_a_real_browser_changes_nothing(controller, tmp_path):
    page = PAGE.replace("CHANGE", json.dumps(CHANGE)).replace("API", str(controller.api_port))
    server = RebindingServer(controller.api_port, page)
    try:
        browser = subprocess.run(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}",
             "--host-resolver-rules=MAP rebound.example 127.0.0.2", "--virtual-time-budget=8000",
             "--dump-dom", f"http://rebound.example:{controller.api_port}/"],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        server.stop()
    seen = re.search(r'<pre id="log">(.*?)</pre>', browser.stdout, re.S)
    assert seen, browser.stdout[-2000:] + browser.stderr[-2000:]
    results = dict(line.split(": ", 1) for line in seen.group(1).strip().splitlines() if ": " in line)
    print("\n" + seen.group(1))
    assert "done" in seen.group(1)

    # The rebound requests reached the API and were refused for their Host name.
    for name in ("rebound-json", "rebound-read", "rebound-reload"):
        assert results[name].startswith("403 ") and "the Host must be a loopback name" in results[name], results
    assert any(head.startswith("POST /smtp/v1/exceptions") and "Host: rebound.example" in head for head in server.forwarded)
    # Cross-site: opaque to the page, refused by the API (the log says why), or stopped at the preflight.
    assert results["no-cors-text"] == "0 (opaque)"
    assert results["cors-json"].startswith("refused by the browser")
    # The API's access log: the rebound JSON, the no-cors text and the form each reached it and got
    # 403; the cross-site JSON got no further than its preflight (OPTIONS, never granted).
    log = controller.access_log.read_text()
    assert log.count('"POST /smtp/v1/exceptions HTTP/1.1" 403') == 3, log[-3000:]
    assert "POST /smtp/v1/exceptions" not in controller.log()  # the controller's own log stays readable
    assert re.search(r'"OPTIONS /smtp/v1/exceptions HTTP/1.1" 40[45]', log), log[-3000:]

    # Nothing changed: no API exception, no state file.
    status, body = controller.api("GET", "/smtp/v1/exceptions")
    assert status == 200 and [e for e in body["exceptions"] if e["source"] == "api"] == []
    assert not controller.state_file.exists()

    # The twin: the same change from a loopback client naming the loopback Host is accepted.
    status, created = controller.api("POST", "/smtp/v1/exceptions", CHANGE)
    assert status in (201, 202), created
    assert controller.api("DELETE", f"/smtp/v1/exceptions/{created['id']}")[0] in (200, 202)


def test_the_status_page_asks_for_the_read_token_and_keeps_it_for_the_tab(tmp_path):
    """With tokens, the status page shows switches and exceptions to anyone
    who can reach it, and who was blocked only once the read token is given;
    a wrong one is refused, and the token stays in the tab (sessionStorage),
    never in the page's storage that outlives it."""
    policy = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "policy.yaml", policy)
    running = Controller(policy, tmp_path / "ryu-manager.txt", token="change-token",
                         env={"SMTP_POLICY_READ_TOKEN": "read-token"}).start()
    try:
        with Chromium(tmp_path / "profile") as browser:
            browser.open(f"http://127.0.0.1:{running.api_port}/smtp/")
            browser.wait_for("Number(document.body.dataset.refreshes) >= 1")
            assert browser.evaluate("document.querySelectorAll('#exceptions tbody tr[data-id]').length") == 4
            # Ids (what `exceptions rm` takes) and sources; times in UTC with their date; the release.
            assert browser.evaluate("[...document.querySelectorAll('#exceptions tbody tr[data-id]')].every("
                                    "(tr) => tr.cells[0].textContent === tr.dataset.id && tr.cells[3].textContent === 'file')")
            assert re.search(r"updated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$",
                             browser.evaluate("document.getElementById('status').textContent"))
            browser.wait_for("document.getElementById('build').textContent !== ''")
            assert browser.evaluate("document.getElementById('build').textContent").startswith(f"smtp-border {version()} · ")
            # No switch is connected: every enforcing one is behind, and the banner says so.
            banner = browser.evaluate("document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent")
            assert "enforcing switch(es) NOT in sync" in banner and "not connected" in banner, banner
            assert browser.evaluate("document.getElementById('token-form').offsetParent !== null")
            assert "Authorization: Bearer" in browser.evaluate("document.getElementById('blocked-note').textContent")

            def give(token):
                browser.evaluate(f"""(() => {{ document.getElementById('token').value = {json.dumps(token)};
                    document.getElementById('token-form').requestSubmit(); }})()""")

            give("wrong")
            browser.wait_for("Number(document.body.dataset.refreshes) >= 2")
            assert browser.evaluate("document.getElementById('token-form').offsetParent !== null")
            give("read-token")
            browser.wait_for("document.getElementById('token-form').offsetParent === null")
            assert browser.evaluate("document.querySelector('#blocked tbody td').textContent") == \
                "no blocked attempt recorded"
            assert browser.evaluate("sessionStorage.getItem('smtp-border-read-token')") == "read-token"
            assert browser.evaluate("localStorage.length") == 0
    finally:
        running.stop()
