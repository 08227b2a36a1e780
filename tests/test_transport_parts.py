"""The transport's parts on their own: addresses, HTTP framing, the route table and its
policy (a new endpoint is one table entry), and how auth outcomes read on the wire."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys

import pytest

from cc_daemon import API_VERSION, API_VERSION_HEADER
from cc_daemon.auth import Denied, Refusal
from cc_daemon.transport.addresses import MAX_UNIX_PATH, AddressError, ListenAddress
from cc_daemon.transport.endpoints import ROUTES
from cc_daemon.transport.framing import (MAX_HEADER_LINES, Headers, HeadersTooLarge, HttpError, IncompleteRequest,
                                         declares_body, encode_response, http_version, read_chunked_body,
                                         read_headers, read_request_body)
from cc_daemon.transport.policy import REFUSALS, Auth, Route, check_api_version, refusal

ORIGIN = "http://localhost:3000"


# -- addresses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, url, base_url, family, sockaddr", [
    ("tcp://127.0.0.1:8765", "tcp://127.0.0.1:8765", "http://127.0.0.1:8765", socket.AF_INET, ("127.0.0.1", 8765)),
    ("tcp://[::1]:80/", "tcp://[::1]:80", "http://[::1]:80", socket.AF_INET6, ("::1", 80)),
    ("unix:///run/d s.sock", "unix:///run/d s.sock", "http+unix://%2Frun%2Fd%20s.sock", socket.AF_UNIX,
     "/run/d s.sock"),
])
def test_an_address_gives_what_servers_and_clients_need(text, url, base_url, family, sockaddr):
    address = ListenAddress.parse(text)
    assert (address.url(), address.base_url(), address.family, address.sockaddr()) == (url, base_url, family,
                                                                                       sockaddr)
    assert ListenAddress.parse(address.url()) == address


@pytest.mark.parametrize("text, fragment", [
    ("tcp://nohost", "HOST:PORT"), ("tcp://h:http", "not a number"), ("tcp://h:70000", "out of range"),
    ("unix://relative.sock", "absolute"), ("unix:///" + "x" * MAX_UNIX_PATH, "longer than"),
    ("http://h:1", "unsupported"),
])
def test_a_bad_address_says_why(text, fragment):
    with pytest.raises(AddressError, match=fragment):
        ListenAddress.parse(text)


def test_addresses_load_nothing_of_the_server():
    probe = ("import json, sys; import cc_daemon.transport.addresses; "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('cc_daemon', 'http')))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                       check=True).stdout)
    assert loaded == ["cc_daemon", "cc_daemon.transport", "cc_daemon.transport.addresses"]


# -- framing ------------------------------------------------------------------------------------
def headers_of(text: str) -> Headers:
    return read_headers(io.BytesIO(text.encode("latin-1")))


def test_headers_first_field_wins_and_folded_lines_are_kept():
    headers = headers_of("Host: a\r\nX-Long: one\r\n two\r\nhost: b\r\n\r\nbody")
    assert headers.get("HOST") == "a"
    assert headers.get("x-long") == "one\r\n two"
    assert headers.get("missing", "-") == "-"


def test_headers_the_stream_ends_inside_are_no_request():
    for cut in ("", "Host: a", "Host: a\r\n", "Host: a\r\nAuthorization: Bearer x"):
        with pytest.raises(IncompleteRequest):
            headers_of(cut)


def test_too_many_header_lines_are_refused():
    with pytest.raises(HeadersTooLarge):
        headers_of("".join(f"X-{n}: v\r\n" for n in range(MAX_HEADER_LINES + 1)) + "\r\n")


@pytest.mark.parametrize("text, version", [
    ("HTTP/1.1", (1, 1)), ("HTTP/1.0", (1, 0)), ("HTTP/2.0", (2, 0)),
    ("HTTP/1", None), ("HTTP/1.1.1", None), ("HTTP/-1.1", None), ("http/1.1", None),
])
def test_http_version(text, version):
    assert http_version(text) == version


def body_of(head: str, data: bytes, limit: int = 100) -> bytes:
    return read_request_body(io.BytesIO(data), headers_of(head + "\r\n"), limit)


def test_bodies_by_content_length_and_chunked():
    assert body_of("Content-Length: 5\r\n", b"helloEXTRA") == b"hello"
    assert body_of("", b"ignored") == b""
    chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    assert body_of("Transfer-Encoding: chunked\r\n", chunked) == b"hello world"


@pytest.mark.parametrize("head, data, status", [
    ("Content-Length: -1\r\n", b"", 400), ("Content-Length: 1_0\r\n", b"", 400),
    ("Content-Length: 5\r\n", b"abc", 400), ("Content-Length: 101\r\n", b"x" * 101, 413),
    ("Transfer-Encoding: chunked\r\n", b"zz\r\n", 400),
    ("Transfer-Encoding: chunked\r\n", b"40\r\n" + b"x" * 64 + b"\r\n40\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n", 413),
])
def test_a_bad_body_is_refused_and_closes_the_connection(head, data, status):
    with pytest.raises(HttpError) as raised:
        body_of(head, data)
    assert raised.value.status == status and raised.value.close


def test_chunked_body_limit_counts_every_chunk():
    with pytest.raises(HttpError):
        read_chunked_body(io.BytesIO(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), 5)


def test_declares_body():
    assert not declares_body(headers_of("\r\n"))
    assert not declares_body(headers_of("Content-Length: 0\r\n\r\n"))
    assert declares_body(headers_of("Content-Length: 3\r\n\r\n"))
    assert declares_body(headers_of("Transfer-Encoding: chunked\r\n\r\n"))


def test_a_response_is_one_buffer_with_the_common_head():
    data = encode_response(404, [("Content-Length", "2")], b"{}")
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n" + f"{API_VERSION_HEADER}: {API_VERSION}\r\n".encode())
    assert data.endswith(b"\r\nContent-Length: 2\r\n\r\n{}")


# -- policy -------------------------------------------------------------------------------------
def test_every_refusal_kind_has_one_answer():
    assert set(REFUSALS) == set(Refusal)
    locked = refusal(Denied(Refusal.LOCKED_OUT, "locked out", retry_after=0.2))
    assert (locked.status, locked.body, locked.headers) == (429, {"error": "rate limited"}, (("Retry-After", "1"),))
    assert refusal(Denied(Refusal.LOCKED_OUT, "locked out", retry_after=41.6)).headers == (("Retry-After", "42"),)
    for kind in (Refusal.MISSING_TOKEN, Refusal.WRONG_TOKEN, Refusal.WRONG_PEER):
        answer = refusal(Denied(kind, "why"))
        assert (answer.status, answer.body, answer.headers) == (401, {"error": "unauthenticated"}, ())
    assert refusal(Denied(Refusal.TOKEN_ROTATED, "why")).body == {"error": "token rotated"}
    assert refusal(Denied(Refusal.HOST_NOT_ALLOWED, "why")).body == {"error": "host not allowed"}


def test_api_version_check():
    check_api_version(headers_of(f"{API_VERSION_HEADER}: {API_VERSION}\r\n\r\n"))
    with pytest.raises(HttpError) as raised:
        check_api_version(headers_of("\r\n"))
    assert raised.value.status == 426 and raised.value.body["got"] is None


def test_the_route_table_says_each_endpoints_policy():
    assert {path for path, route in ROUTES.items() if route.versioned} == {"/rpc", "/events"}
    assert {path for path, route in ROUTES.items() if route.auth is Auth.WAIVABLE} == {"/healthz", "/readyz",
                                                                                       "/metrics"}
    public = {path for path, route in ROUTES.items() if route.auth is Auth.PUBLIC}
    assert {"/ui", "/ui/", "/ui/index.html", "/ui/app.js", "/ui/style.css"} <= public
    assert all(path == "/ui" or path.startswith("/ui/") for path in public)
    assert all(route.needs_credentials(False) for path, route in ROUTES.items() if path not in public)
    assert not any(route.needs_credentials(False) or route.cors or route.versioned for path, route in ROUTES.items()
                   if path in public)
    assert [path for path, route in ROUTES.items() if route.needs_credentials(True)] == ["/rpc", "/events"]


def test_a_new_endpoint_is_one_table_entry(make_daemon, monkeypatch):
    def echo(request) -> None:
        request.respond(200, {"client_id": request.caller().client_id})

    monkeypatch.setitem(ROUTES, "/echo", Route(("GET",), echo, Auth.REQUIRED, versioned=True, cors=False))
    daemon = make_daemon("tcp", allow_origins=(ORIGIN,))
    answered = daemon.get("/echo")
    assert answered.status_code == 200 and answered.json()["client_id"] == answered.headers["X-Client-Id"]
    assert daemon.get("/echo", headers={API_VERSION_HEADER: API_VERSION}).status_code == 401
    assert daemon.get("/echo", headers=daemon.headers(**{API_VERSION_HEADER: "9"})).status_code == 426
    posted = daemon.http.post(daemon.base_url + "/echo", headers=daemon.headers(), timeout=10)
    assert posted.status_code == 405 and posted.headers["Allow"] == "GET"
    # No CORS for this route: its answers do not carry the headers, and a preflight is just
    # a method it does not answer.
    from_page = daemon.get("/echo", headers=daemon.headers(Origin=ORIGIN))
    assert from_page.status_code == 200 and "Access-Control-Allow-Origin" not in from_page.headers
    preflight = daemon.http.options(daemon.base_url + "/echo", headers={"Origin": ORIGIN}, timeout=10)
    assert preflight.status_code == 405
    assert 'ccd_http_requests_total{path="/echo"}' in daemon.get("/metrics", headers=daemon.headers(Accept="text/plain")).text
