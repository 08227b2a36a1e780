"""The web workbench in a real browser (issue 14): headless Debian chromium, driven by
Playwright, against daemons started as a user starts them.

Each flow is a test: open the address ``daemon open`` prints, drive a demo session to a
written file while a second browser (another client) sees the request read-only, resume
after a daemon restart without losing or repeating an event, show a ``gap``, keep other
origins out, and let the Content-Security-Policy stop injected script. A failed test leaves
a screenshot of each of its pages in .cache/browser-failures/.
"""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from cc_daemon.client import NotOriginator
from helpers.browser import Workbench, free_port, launch
from helpers.daemons import cli, short_tmpdir, wait_for
from helpers.frontend import client_of


@pytest.fixture(scope="module")
def browser():
    home = short_tmpdir()
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright, home)
            yield browser
            browser.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def workbench(browser, request):
    """Opens workbenches, each in a browser context of its own; screenshots them if the test failed."""
    opened: list[Workbench] = []
    failures_before = request.session.testsfailed

    def open_one(name: str = "page") -> Workbench:
        bench = Workbench(browser.new_context(viewport={"width": 1400, "height": 900}), name)
        opened.append(bench)
        return bench

    yield open_one
    failed = request.session.testsfailed > failures_before
    for bench in opened:
        if failed:
            print(f"screenshot: {bench.screenshot(request.node.name)}")
        bench.context.close()


def serve_both(subprocess_daemon, port: int, *extra: str, data_dir: Path | None = None):
    """A daemon as the issue's user starts it: its Unix socket, and TCP for the browser."""
    root = data_dir or short_tmpdir()
    daemon = subprocess_daemon("--listen", f"unix://{root}/run/daemon.sock", "--listen", f"tcp://127.0.0.1:{port}",
                               "--log-level", "debug", *extra, data_dir=root)
    return daemon


def page_address(daemon) -> str:
    result = cli("daemon", "open", "--data-dir", str(daemon.data_dir))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def tcp_client(daemon, port: int, kind: str):
    from cc_daemon.client import Client, Endpoint

    return Client(Endpoint.from_address(f"tcp://127.0.0.1:{port}", daemon.token), kind=kind, client_id=None)


def stop(daemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(10) == 0


def test_a_demo_session_end_to_end_from_the_page(subprocess_daemon, workbench, tmp_path):
    port = free_port()
    daemon = serve_both(subprocess_daemon, port)
    url = page_address(daemon)
    alice = workbench("alice")
    alice.open(url)
    # The token left the address bar (and the history entry) at once; the tab keeps it.
    base = f"http://127.0.0.1:{port}/ui/"
    assert alice.page.url == base and alice.page.evaluate("location.href") == base
    assert alice.page.evaluate("sessionStorage.getItem('ccd.token')") == daemon.token

    session_id = alice.create_session(tmp_path, name="from-the-page")
    expect(alice.page.locator("#conversation-title")).to_have_text(f"from-the-page ({session_id})")
    expect(alice.page.locator(f"#sessions tr[data-session-id='{session_id}'] .state")).to_have_text("idle")
    alice.send("hello")
    expect(alice.turn("hello").locator(".reply")).to_contain_text("hello")
    expect(alice.turn("hello").locator(".turn-end")).to_have_text("turn completed")

    bob = workbench("bob")  # another client: another browser context, another client id
    bob.open(url)
    bob.select(session_id)
    alice.send("write notes.txt from the page")
    mine = alice.page.locator("#permissions .request.mine")
    expect(mine).to_have_count(1)
    expect(mine.locator("button")).to_have_text(["Approve", "Deny"])
    request_id = mine.get_attribute("data-request-id")
    alice_ref = alice.turn("write notes.txt").locator(".who").inner_text().split()[3]

    theirs = bob.page.locator(f"#permissions .request[data-request-id='{request_id}']")
    expect(theirs).to_contain_text(f"read-only: only web client {alice_ref} may answer")
    expect(theirs.locator("button")).to_have_count(0)
    expect(bob.turn("write notes.txt").locator(".who")).not_to_contain_text("this page")
    with client_of(daemon, "cli") as other, pytest.raises(NotOriginator):
        other.permissions.approve(request_id)  # nor may any other client

    mine.locator("button.approve").click()
    expect(alice.turn("write notes.txt").locator(".turn-end")).to_have_text("turn completed")
    expect(alice.turn("write notes.txt").locator(".tool-output")).to_have_text("wrote 14 bytes")
    assert (tmp_path / "notes.txt").read_text() == "from the page\n"
    expect(bob.page.locator("#permissions .request")).to_have_count(0)
    expect(bob.turn("write notes.txt").locator(".permission-note")).to_contain_text("approved")
    expect(alice.page.locator("#health dd[data-field='version']")).to_contain_text("0.1.0")

    # The token was in no request the browser made, in no Referer, and in no log.
    for bench in (alice, bob):
        for request_url, headers in bench.requests:
            assert daemon.token not in request_url and daemon.token not in headers.get("referer", "")
        assert bench.console_errors() == []
    stop(daemon)
    logs = [path.read_text() for path in (daemon.data_dir / "logs").iterdir()]
    assert logs and not any(daemon.token in text for text in logs)
    assert daemon.token not in daemon.process.stdout.read() + daemon.process.stderr.read()


def test_the_page_resumes_after_a_daemon_restart_without_losing_or_repeating_an_event(
        subprocess_daemon, workbench, tmp_path):
    port = free_port()
    first = serve_both(subprocess_daemon, port)
    url = page_address(first)
    page = workbench()
    page.open(url)
    session_id = page.create_session(tmp_path)
    page.send("before the restart")
    expect(page.turn("before the restart").locator(".turn-end")).to_have_text("turn completed")

    stop(first)
    expect(page.page.locator("#connection")).to_contain_text("reconnecting")
    second = serve_both(subprocess_daemon, port, data_dir=first.data_dir)
    expect(page.page.locator("#connection")).to_have_text("live", timeout=15000)
    expect(page.page.locator("#conversation .note").last).to_contain_text("the daemon restarted")
    page.send("after the restart")
    expect(page.turn("after the restart").locator(".turn-end")).to_have_text("turn completed")

    with tcp_client(second, port, "check") as client:
        history = client.call("events.query", limit=1000)
        assert history["cursor"] is None and history["oldest_id"] == 1
        ids = [event["id"] for event in history["events"]]
    assert ids == list(range(1, len(ids) + 1))
    # Every stored event exactly once: as many as the daemon holds, the last one included.
    wait_for(lambda: page.received() == len(ids), message=f"the page to count {len(ids)} events")
    page.page.fill("#event-filter [name=types]", "turn_done")
    rows = page.page.locator("#event-list .event-row")
    expect(rows).to_have_count(2)
    done = [event["id"] for event in history["events"] if event["type"] == "turn_done"]
    assert [int(value) for value in rows.evaluate_all("rows => rows.map(row => row.dataset.id)")] == done
    expect(page.turn("before the restart")).to_have_count(1)
    expect(page.page.locator(".notice-gap")).to_have_count(0)
    assert session_id


def test_a_gap_shows_a_notice(subprocess_daemon, workbench):
    port = free_port()
    first = serve_both(subprocess_daemon, port)
    page = workbench()
    page.open(page_address(first))
    with tcp_client(first, port, "pinger") as client:
        client.call("echo.ping")
    wait_for(lambda: page.received() == 1, message="the page to see the first event")
    # The page cannot reconnect while the daemon restarts with a retention of 5 events and
    # 20 more are published: the ids after the page's last one are pruned before it is back.
    page.page.route("**/events*", lambda route: route.abort())
    stop(first)
    second = serve_both(subprocess_daemon, port, "--retention-events", "5", data_dir=first.data_dir)
    with tcp_client(second, port, "pinger") as client:
        for _ in range(20):
            client.call("echo.ping")
        wait_for(lambda: client.call("events.query", limit=1)["oldest_id"] > 2, message="retention to prune")
        oldest = client.call("events.query", limit=1)["oldest_id"]
    page.page.unroute("**/events*")
    notice = page.page.locator(".notice-gap")
    expect(notice).to_contain_text(f"Events 2–{oldest - 1} were removed (retention_prune)", timeout=15000)
    expect(page.page.locator("#event-list .event-row.gap")).to_have_count(1)
    expect(page.page.locator("#connection")).to_have_text("live")


def test_a_rotated_token_asks_for_the_new_one_and_the_page_goes_on_where_it_was(subprocess_daemon, workbench):
    port = free_port()
    daemon = serve_both(subprocess_daemon, port)
    page = workbench()
    page.open(page_address(daemon))
    with client_of(daemon, "pinger") as client:
        client.call("echo.ping")
    wait_for(lambda: page.received() == 1, message="the page to see the first event")
    rotated = cli("daemon", "rotate-token", "--print-token", "--data-dir", str(daemon.data_dir))
    assert rotated.returncode == 0, rotated.stderr
    new_token = rotated.stdout.strip().splitlines()[-1]
    expect(page.page.locator(".notice-error")).to_contain_text("The daemon's token was rotated.")
    expect(page.page.locator("#connection")).to_have_text("unauthorized")
    page.page.fill("#token-form [name=token]", new_token)
    page.page.click("#token-form button")
    expect(page.page.locator("#connection")).to_have_text("live")
    with client_of(daemon, "pinger") as client:  # by the Unix socket, which needs no token
        client.call("echo.ping")
    wait_for(lambda: page.received() == 2, message="the page to see the second event")
    expect(page.page.locator("#event-filter output")).to_have_text("2 events")
    assert page.page.evaluate("sessionStorage.getItem('ccd.token')") == new_token


def test_the_content_security_policy_blocks_inline_script(subprocess_daemon, workbench):
    port = free_port()
    daemon = serve_both(subprocess_daemon, port)
    page = workbench()
    response = page.page.goto(page_address(daemon))
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    page.page.wait_for_selector("body[data-first-render-ms]")
    with page.page.expect_console_message(lambda message: "Content Security Policy" in message.text) as console:
        injected = page.page.evaluate("""() => new Promise(resolve => {
            document.addEventListener("securitypolicyviolation", (e) => resolve(e.violatedDirective), {once: true});
            const script = document.createElement("script");
            script.textContent = "window.injected = true";
            document.body.append(script);
        })""")
    assert injected.startswith("script-src")
    assert console.value.type == "error" and "inline script" in console.value.text
    assert page.page.evaluate("window.injected === undefined")


class ForeignPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><title>elsewhere</title><p>another origin"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_page_from_another_origin_cannot_call_the_api(subprocess_daemon, workbench):
    port = free_port()
    daemon = serve_both(subprocess_daemon, port)
    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ForeignPage)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        page = workbench()
        page.page.goto(f"http://127.0.0.1:{foreign.server_address[1]}/")
        api = f"http://127.0.0.1:{port}"
        # Even holding the token: the preflight is refused, so the call is never made.
        outcome = page.page.evaluate("""async ([api, token]) => {
            try {
                await fetch(api + "/rpc", {method: "POST", body: '{"jsonrpc":"2.0","method":"echo.ping","id":1}',
                    headers: {"Authorization": "Bearer " + token, "Cheetahclaws-Api-Version": "0",
                              "Content-Type": "application/json"}});
                return "answered";
            } catch (error) { return error.name; }
        }""", [api, daemon.token])
        assert outcome == "TypeError"
        # A request that needs no preflight reaches the daemon, which refuses its Origin.
        page.page.evaluate("""async (api) => {
            await fetch(api + "/rpc", {method: "POST", mode: "no-cors", body: '{"jsonrpc":"2.0","method":"echo.ping","id":1}'});
        }""", api)
        # Nor can it frame the workbench.
        with page.page.expect_console_message(lambda message: "frame-ancestors 'none'" in message.text):
            page.page.evaluate("""(api) => {
                const frame = document.createElement("iframe");
                frame.src = api + "/ui/";
                document.body.append(frame);
            }""", api)
    finally:
        foreign.shutdown()
        foreign.server_close()
    audit = [json.loads(line) for line in (daemon.data_dir / "logs" / "auth.jsonl").read_text().splitlines()]
    assert any(entry.get("reason") == "origin not allowed" for entry in audit)
    with tcp_client(daemon, port, "check") as client:
        assert client.call("events.query", types=["ping_received"])["events"] == []


def test_first_render_with_1000_events_of_history(subprocess_daemon, workbench, tmp_path):
    port = free_port()
    daemon = serve_both(subprocess_daemon, port)
    with tcp_client(daemon, port, "history") as client:
        for _ in range(10):
            client.batch([("echo.ping", {"n": n}) for n in range(100)])
        assert client.call("system.status")["last_event_id"] == 1000
    page = workbench()
    page.open(page_address(daemon))
    elapsed = page.first_render_ms()
    print(f"\nfirst render with 1,000 events of history: {elapsed} ms")
    wait_for(lambda: page.received() == 1000, message="the page to count the history")
    expect(page.page.locator("#event-filter output")).to_have_text("1000 events")
    expect(page.page.locator("#event-list .event-row").last).to_have_attribute("data-id", "1000")
    assert elapsed < 1000


def test_a_terminal_delegates_its_request_to_the_page_which_answers_it(subprocess_daemon, workbench, tmp_path):
    """Issue 15 item 5 from the page's side: a terminal's request is read-only on the page
    until the terminal names the page's client_ref (shown in its health panel) as delegate."""
    port = free_port()
    daemon = serve_both(subprocess_daemon, port)
    page = workbench("page")
    page.open(page_address(daemon))
    page_ref = wait_for(lambda: page.page.locator("#health dd[data-field='this page']").inner_text()
                        .removeprefix("web client ").strip("?"), message="the page's client_ref")
    with client_of(daemon, "repl") as terminal:
        session_id = terminal.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]
        terminal.call("session.send", session_id=session_id, text="write delegated.txt answered in the browser")
        request = page.page.locator("#permissions .request")
        expect(request).to_contain_text("read-only: only repl client")
        expect(request.locator("button")).to_have_count(0)

        terminal.call("session.delegate", session_id=session_id, to=page_ref)
        expect(request).to_have_class("request mine")
        request.locator("button.approve").click()
        wait_for(lambda: (tmp_path / "delegated.txt").exists(), message="the approved write")
        assert (tmp_path / "delegated.txt").read_text() == "answered in the browser\n"

        terminal.call("session.delegate", session_id=session_id, to=None)  # taken back: read-only again
        terminal.call("session.send", session_id=session_id, text="write again.txt not from the page")
        expect(page.page.locator("#permissions .request")).to_contain_text("read-only: only repl client")
        expect(page.page.locator("#permissions .request button")).to_have_count(0)
    assert page.console_errors() == []
