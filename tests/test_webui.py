"""The web workbench over HTTP, without a browser (issue 14): its files, its headers, the
one origin admitted beside the allow-list, and ``cheetahclaws daemon open``.

What the page does in a real browser is tests/test_browser.py.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cc_daemon import webui
from cc_daemon.transport.policy import CONTENT_SECURITY_POLICY
from helpers.daemons import cli, short_tmpdir
from helpers.outsider import send, target

PAGE_FILES = ["", "index.html", "app.js", "api.js", "stream.js", "store.js", "dom.js", "style.css", "icon.svg",
              "views/conversation.js", "views/events.js", "views/health.js", "views/permissions.js",
              "views/sessions.js"]


@pytest.mark.parametrize("name", PAGE_FILES)
def test_the_page_is_served_without_a_token_and_confined(tcp_daemon, name):
    answer = send(tcp_daemon, None, path=f"/ui/{name}", versioned=False)
    assert answer.status == 200, answer.body
    assert answer.body == (webui.STATIC / (name or "index.html")).read_bytes()
    suffix = Path(name or "index.html").suffix
    assert answer.headers["Content-Type"] == webui.MEDIA_TYPES[suffix]
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "X-Client-Id" not in answer.headers and "Access-Control-Allow-Origin" not in answer.headers


def test_every_file_of_the_package_is_served_and_nothing_else(tcp_daemon):
    assert sorted(webui.ASSETS) == sorted(name for name in PAGE_FILES if name)
    assert send(tcp_daemon, None, path="/ui/missing.js", versioned=False).status == 404
    assert send(tcp_daemon, None, path="/ui/../daemon_token", versioned=False).status == 404
    redirect = send(tcp_daemon, None, path="/ui", versioned=False)
    assert redirect.status == 308 and redirect.headers["Location"] == "/ui/"
    # The page's files are public; every call it makes is not.
    assert send(tcp_daemon, None).status == 401
    assert send(tcp_daemon, None, path="/events").status == 401


def test_the_page_has_no_inline_code_and_loads_nothing_from_elsewhere():
    class Scan(HTMLParser):
        def __init__(self):
            super().__init__()
            self.problems: list[str] = []

        def handle_starttag(self, tag, attrs):
            names = dict(attrs)
            if tag == "script" and "src" not in names:
                self.problems.append("inline <script>")
            if tag == "style":
                self.problems.append("<style> element")
            self.problems.extend(f"{name}= on <{tag}>" for name in names if name == "style" or name.startswith("on"))

    scan = Scan()
    scan.feed((webui.STATIC / "index.html").read_text())
    assert scan.problems == []
    for name in webui.ASSETS:
        text = (webui.STATIC / name).read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f"{name} names another origin"
        if name.endswith(".js"):
            # Text from agents and other clients must never become markup or code.
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function",
                                 text), name


def own_origin(daemon) -> str:
    host, port = target(daemon)
    return f"http://{host}:{port}"


def test_the_pages_own_origin_is_admitted_and_no_other(make_daemon):
    daemon = make_daemon("tcp", allow_origins=("http://localhost:3000",))
    host, port = target(daemon)
    mine = send(daemon, daemon.token, headers={"Origin": own_origin(daemon)})
    assert mine.status == 200 and mine.json()["result"] == "pong"
    # Another port of the same host is another program's page; another name of this host is
    # another origin; a sandboxed page says "null"; a rebound name is refused by its Host.
    for origin in (f"http://{host}:{port + 1}", f"http://localhost:{port}", f"https://{host}:{port}", "null",
                   f"http://{host}:{port}.evil.example"):
        refused = send(daemon, daemon.token, headers={"Origin": origin})
        assert (refused.status, refused.json()) == (403, {"error": "origin not allowed"}), origin
    rebound = send(daemon, daemon.token, headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"})
    assert (rebound.status, rebound.json()) == (403, {"error": "host not allowed"})
    # An Origin naming the port the request came in on, but a Host naming another, is no page of ours.
    moved = send(daemon, daemon.token, headers={"Host": f"{host}:{port + 1}", "Origin": f"http://{host}:{port + 1}"})
    assert moved.status == 403
    # The allow-list works as before, and the own origin needs the token like anyone.
    assert send(daemon, daemon.token, headers={"Origin": "http://localhost:3000"}).status == 200
    assert send(daemon, None, headers={"Origin": own_origin(daemon)}).status == 401


def test_the_own_origin_is_that_of_the_listener_the_request_came_in_on(subprocess_daemon):
    root = short_tmpdir()
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0", "--listen", "tcp://localhost:0",
                               data_dir=root)
    first, second = json.loads((root / "daemon.json").read_text())["addresses"]
    port_of = {address: int(address.rsplit(":", 1)[1]) for address in (first, second)}

    class At:
        def __init__(self, address):
            self.address = address

    # A request to the first listener naming the second one's port in Host and Origin alike.
    crossed = f"127.0.0.1:{port_of[second]}"
    answer = send(At(first), daemon.token, headers={"Host": crossed, "Origin": f"http://{crossed}"})
    assert answer.status == 403
    assert send(At(first), daemon.token, headers={"Origin": f"http://127.0.0.1:{port_of[first]}"}).status == 200
    assert send(At(second), daemon.token, headers={"Host": crossed, "Origin": f"http://{crossed}"}).status == 200


# -- cheetahclaws daemon open -----------------------------------------------------------------
def test_daemon_open_prints_the_page_with_the_token_in_the_fragment(subprocess_daemon):
    root = short_tmpdir()
    daemon = subprocess_daemon("--listen", f"unix://{root}/run/daemon.sock", "--listen", "tcp://127.0.0.1:0",
                               data_dir=root)
    result = cli("daemon", "open", "--data-dir", str(root))
    assert result.returncode == 0, result.stderr
    url = urlsplit(result.stdout.strip())
    tcp = json.loads((root / "daemon.json").read_text())["addresses"][1]
    assert f"tcp://{url.netloc}" == tcp and url.path == "/ui/" and url.query == ""
    assert url.fragment == f"token={daemon.token}"


def test_daemon_open_hands_the_browser_a_private_file_not_the_token(subprocess_daemon, tmp_path):
    root = short_tmpdir()
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=root)
    record = tmp_path / "argv.json"
    browser = tmp_path / "browser"
    browser.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    browser.chmod(0o700)
    result = cli("daemon", "open", "--browser", "--data-dir", str(root), env={"BROWSER": str(browser)})
    assert result.returncode == 0, result.stderr
    argv = json.loads(record.read_text())
    assert daemon.token not in " ".join(argv)
    launcher = Path(urlsplit(argv[0]).path)
    assert launcher == root / "run" / "open.html"
    assert stat.S_IMODE(os.stat(launcher).st_mode) == 0o600
    assert f'content="0;url={result.stdout.strip()}"' in launcher.read_text()


def test_daemon_open_says_how_to_add_a_tcp_listener(subprocess_daemon):
    root = short_tmpdir()
    subprocess_daemon(data_dir=root)  # the default: a Unix socket only
    result = cli("daemon", "open", "--data-dir", str(root))
    assert result.returncode == 1 and result.stdout == ""
    assert "which no browser can reach" in result.stderr
    assert f"--listen unix://{root}/run/daemon.sock --listen tcp://127.0.0.1:8765" in result.stderr
    nobody = cli("daemon", "open", "--data-dir", str(short_tmpdir()))
    assert nobody.returncode == 3 and "no daemon is running" in nobody.stderr
