"""Authentication, throttling, audit, browser defences, token rotation, secret hygiene (RFC 0002)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from cc_daemon import auth
from cc_daemon.auth import Presented, TokenStore
from helpers.daemons import cli, short_tmpdir, wait_for
from helpers.outsider import audit_lines

NOBODY = 65534


def ping(daemon, headers=None):
    return daemon.post({"jsonrpc": "2.0", "method": "system.ping", "id": 1},
                       headers=headers if headers is not None else daemon.headers())


def without_auth(daemon, **extra):
    headers = {k: v for k, v in daemon.headers().items() if k != "Authorization"}
    headers.update(extra)
    return headers


# -- TCP bearer token -------------------------------------------------------------------------
def test_missing_and_wrong_token_get_byte_identical_401(tcp_daemon):
    missing = ping(tcp_daemon, without_auth(tcp_daemon))
    wrong = ping(tcp_daemon, without_auth(tcp_daemon, Authorization="Bearer " + "A" * 43))
    assert missing.status_code == wrong.status_code == 401
    assert missing.content == wrong.content == b'{"error":"unauthenticated"}'
    assert "X-Client-Id" not in missing.headers and "X-Client-Id" not in wrong.headers


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(tcp_daemon, scheme):
    response = ping(tcp_daemon, without_auth(tcp_daemon, Authorization=f"{scheme} {tcp_daemon.token}"))
    assert response.json()["result"] == "pong"


def test_non_ascii_or_control_token_is_a_plain_401(tcp_daemon):
    for bad in ("Bearer tökén", "Bearer \x01\x02", "Bearer " + "é" * 43, "Basic abc", "Bearer"):
        response = ping(tcp_daemon, without_auth(tcp_daemon, Authorization=bad.encode("utf-8").decode("latin-1")))
        assert response.status_code in (401, 429)  # 429 once the throttle counts these


def test_health_and_metrics_need_auth_unless_opted_out(make_daemon):
    strict = make_daemon("tcp")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert strict.get(path, headers={}).status_code == 401
    lax = make_daemon("tcp", unauthenticated_metrics=True)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert lax.get(path, headers={}).status_code == 200
    assert ping(lax, without_auth(lax)).status_code == 401  # only those three


def test_token_file_is_0600_43_chars_and_never_leaked(make_daemon):
    daemon = make_daemon("tcp")
    token_file = daemon.data_dir / "daemon_token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert len(daemon.token) == 43


# -- Unix socket peer credentials --------------------------------------------------------------
def statuses_as_nobody(socket_path: str, attempts: int) -> list[str]:
    """Fork a child that becomes ``nobody`` and tries the socket; returns its status lines.

    A fork, not an exec: the interpreter lives under /root, which ``nobody`` cannot enter.
    """
    import socket as socket_module
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, only syscalls, then _exit
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            body = b'{"jsonrpc":"2.0","method":"system.ping","id":1}'
            for _ in range(attempts):
                sock = socket_module.socket(socket_module.AF_UNIX)
                sock.connect(socket_path)
                sock.sendall(b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nCheetahclaws-Api-Version: 0\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                os.write(write_end, sock.recv(65536).split(b"\r\n")[0] + b"\n")
                sock.close()
        finally:
            os._exit(0)
    os.close(write_end)
    output = b""
    while chunk := os.read(read_end, 65536):
        output += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return output.decode().splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_another_uid_is_refused_on_the_unix_socket_and_audited(unix_daemon):
    path = unix_daemon.address[len("unix://"):]
    # Loosen the file modes on purpose: the uid check must hold even when permissions do not.
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o666)
    os.chmod(unix_daemon.data_dir, 0o755)
    statuses = statuses_as_nobody(path, 4)
    assert statuses == ["HTTP/1.1 401 Unauthorized"] * 3 + ["HTTP/1.1 429 Too Many Requests"]
    denied = [line for line in audit_lines(unix_daemon.data_dir) if line["uid"] == NOBODY]
    assert [line["outcome"] for line in denied] == ["denied"] * 3 + ["rate_limited"]
    assert denied[0]["transport"] == "unix" and "uid" in denied[0]["reason"]
    # The daemon's own user is keyed separately and still gets in.
    assert ping(unix_daemon).json()["result"] == "pong"


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a directory owned by someone else needs root")
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o700], ids=["open", "sticky", "private-but-theirs"])
def test_a_socket_dir_another_user_owns_or_can_write_is_refused(mode):
    """Issue 12 finding 2: in a sticky 1777 directory that user B owns, B can delete our
    socket and bind an impostor; in any directory others can write, they can do the same."""
    shared = short_tmpdir() / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    os.chown(shared, NOBODY, NOBODY)
    result = cli("serve", "--data-dir", str(short_tmpdir()), "--listen", f"unix://{shared}/d.sock")
    assert result.returncode == 2 and str(shared) in result.stderr and f"owned by uid {NOBODY}" in result.stderr
    assert not (shared / "d.sock").exists()


def test_a_socket_dir_that_is_ours_but_writable_by_others_is_refused_with_the_fix():
    shared = short_tmpdir() / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    result = cli("serve", "--data-dir", str(short_tmpdir()), "--listen", f"unix://{shared}/d.sock")
    assert result.returncode == 2 and f"chmod go-w {shared}" in result.stderr


# -- browser defences -------------------------------------------------------------------------
def test_foreign_host_header_is_refused(tcp_daemon):
    response = ping(tcp_daemon, {**tcp_daemon.headers(), "Host": "evil.example:8765"})
    assert response.status_code == 403 and response.json() == {"error": "host not allowed"}
    for host in ("localhost", "127.0.0.1:1234", "[::1]:80"):
        assert ping(tcp_daemon, {**tcp_daemon.headers(), "Host": host}).status_code == 200


def test_cross_origin_refused_unless_allow_listed(make_daemon):
    daemon = make_daemon("tcp", allow_origins=("http://localhost:3000",))
    refused = ping(daemon, {**daemon.headers(), "Origin": "http://evil.example"})
    assert refused.status_code == 403 and refused.json() == {"error": "origin not allowed"}
    allowed = ping(daemon, {**daemon.headers(), "Origin": "http://localhost:3000"})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    preflight = daemon.http.options(daemon.base_url + "/rpc", headers={"Origin": "http://localhost:3000"})
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


# -- token rotation ---------------------------------------------------------------------------
def test_rotate_token_takes_effect_at_once_and_closes_old_streams(subprocess_daemon):
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    old_token = daemon.token
    stream = daemon.get("/events", stream=True, timeout=(5, 10))
    chunks = stream.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"retry:")
    result = cli("daemon", "rotate-token", "--data-dir", str(daemon.data_dir), "--print-token")
    assert result.returncode == 0, result.stderr
    new_token = result.stdout.strip().splitlines()[-1]
    assert new_token != old_token and len(new_token) == 43
    assert ping(daemon).status_code == 401  # the very next request with the old token
    daemon.token = new_token
    assert ping(daemon).json()["result"] == "pong"
    # The old stream is closed (a read timeout would raise here), without a "graceful" shutdown.
    assert b"event: shutdown" not in b"".join(chunks)
    assert oct((daemon.data_dir / "daemon_token").stat().st_mode & 0o777) == "0o600"


def replace_token_file(running, token: str) -> None:
    token_file = running.data_dir / "daemon_token"
    tmp = token_file.with_name("tok.tmp")
    tmp.write_text(token + "\n")
    tmp.chmod(0o600)  # a token others can read is not taken (safe_paths)
    os.replace(tmp, token_file)


def test_a_hand_written_token_is_accepted_from_its_first_use(tcp_daemon):
    replace_token_file(tcp_daemon, "B" * 43)
    old_token, tcp_daemon.token = tcp_daemon.token, "B" * 43
    assert ping(tcp_daemon).json()["result"] == "pong"
    tcp_daemon.token = old_token
    assert ping(tcp_daemon).status_code == 401


def test_a_hand_written_token_is_accepted_when_someone_else_reloaded_it_first(tmp_path, monkeypatch):
    store = TokenStore(tmp_path / "daemon_token")
    store.load_or_create()
    replacement = "D" * 43
    (tmp_path / "daemon_token").write_text(replacement + "\n")
    compare = auth.hmac.compare_digest

    def compare_after_a_reload_elsewhere(presented, current):
        monkeypatch.setattr(auth.hmac, "compare_digest", compare)
        reload = threading.Thread(target=store.reload_if_changed)  # the timer, between our read and our reload
        reload.start()
        reload.join()
        return compare(presented, current)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare_after_a_reload_elsewhere)
    assert store.match(replacement) is Presented.CURRENT


def test_a_token_written_while_the_file_is_being_read_is_not_missed(tmp_path, monkeypatch):
    store = TokenStore(tmp_path / "daemon_token")
    store.load_or_create()
    token_file = tmp_path / "daemon_token"
    token_file.write_text("G" * 43 + "\n")
    read_private = auth.read_private

    def read_then_overwrite(path, *args, **kwargs):
        text = read_private(path, *args, **kwargs)
        monkeypatch.setattr(auth, "read_private", read_private)
        token_file.write_text("H" * 43 + "\n")  # the user's next write lands between read and stamp
        os.utime(token_file, ns=(1, 1))  # a different stamp for sure, whatever the clock's grain
        return text

    monkeypatch.setattr(auth, "read_private", read_then_overwrite)
    assert store.reload_if_changed() and store.match("G" * 43) is Presented.CURRENT
    # The newer write is seen, not hidden behind a stamp taken after it.
    assert store.match("H" * 43) is Presented.CURRENT


def test_a_hand_replaced_token_is_retired_within_the_file_check_period(tcp_daemon):
    stream = tcp_daemon.get("/events", stream=True, timeout=(5, 10))
    chunks = stream.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"retry:")
    replace_token_file(tcp_daemon, "C" * 43)  # nobody presents the new token: the periodic check notices
    started = time.monotonic()
    wait_for(lambda: ping(tcp_daemon).status_code == 401, timeout=TokenStore.FILE_CHECK_S + 5,
             message="the old token refused")
    assert time.monotonic() - started < TokenStore.FILE_CHECK_S + 1
    assert b"event: shutdown" not in b"".join(chunks)  # its stream was closed too



def test_an_unreadable_token_file_keeps_the_token_and_a_good_one_is_followed_again(tcp_daemon):
    token_file = tcp_daemon.data_dir / "daemon_token"
    token_file.unlink()
    token_file.mkdir()  # unreadable as a file, for requests and for the periodic check
    log_file = tcp_daemon.data_dir / "logs" / "daemon.log"
    wait_for(lambda: "cannot read the token file" in log_file.read_text(), timeout=TokenStore.FILE_CHECK_S + 5,
             message="the periodic check noticed")
    assert ping(tcp_daemon).json()["result"] == "pong"  # the token in memory still works
    right_token, tcp_daemon.token = tcp_daemon.token, "F" * 43
    assert ping(tcp_daemon).status_code == 401  # a wrong one looks at the file and is refused, not a 500
    token_file.rmdir()
    replace_token_file(tcp_daemon, "E" * 43)
    tcp_daemon.token = right_token
    wait_for(lambda: ping(tcp_daemon).status_code == 401, timeout=TokenStore.FILE_CHECK_S + 5,
             message="the old token refused by a later periodic check")

# -- identity ---------------------------------------------------------------------------------
def test_client_ids_are_minted_and_resumed_without_kind(tcp_daemon):
    first = ping(tcp_daemon, {**tcp_daemon.headers(), "X-Client-Kind": "repl"})
    client_id = first.headers["X-Client-Id"]
    assert len(client_id) == 32 and all(c in "0123456789abcdef" for c in client_id)
    again = ping(tcp_daemon, {**tcp_daemon.headers(), "X-Client-Id": client_id})  # no kind this time
    assert again.headers["X-Client-Id"] == client_id


def test_unknown_or_malformed_client_id_gets_a_fresh_one(tcp_daemon):
    for presented in ("0" * 32, "not-hex", "A" * 32):
        response = ping(tcp_daemon, {**tcp_daemon.headers(), "X-Client-Id": presented})
        assert response.headers["X-Client-Id"] != presented


def test_client_id_survives_a_restart(subprocess_daemon):
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    minted = ping(daemon).headers["X-Client-Id"]
    ping(daemon, {**daemon.headers(), "X-Client-Id": minted})  # presented again: now persisted
    assert cli("daemon", "stop", "--data-dir", str(daemon.data_dir)).returncode == 0
    again = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=daemon.data_dir)
    assert ping(again, {**again.headers(), "X-Client-Id": minted}).headers["X-Client-Id"] == minted


def test_anonymous_one_shot_ids_are_not_persisted(tcp_daemon):
    for _ in range(50):
        ping(tcp_daemon)
    tcp_daemon.daemon.clients.flush()
    registry = tcp_daemon.data_dir / "clients.json"
    assert not registry.exists() or json.loads(registry.read_text())["clients"] == []


def test_watcher_cannot_borrow_the_originators_identity(tcp_daemon):
    alice = tcp_daemon.client("repl")
    bob = tcp_daemon.client("web")
    seen: list[dict] = []
    ready = threading.Event()

    def watch():
        for event in bob.events(since=0, reconnect=False):
            seen.append(event)
            ready.set()
            if event["type"] == "permission_request":
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    request = alice.call("permission.demo", tool="Bash", input={"command": "rm -rf build"})
    watcher.join(10)
    event = next(e for e in seen if e["type"] == "permission_request")
    assert alice.client_id not in json.dumps(seen)  # nothing in Bob's view reveals Alice's id
    assert "client_id" not in event["originator"]
    # Bob tries everything he saw: the request id, the public ref as a client id.
    for borrowed in (None, event["originator"]["client_ref"], event["originator"]["client_ref"] * 2):
        response = tcp_daemon.post({"jsonrpc": "2.0", "method": "permission.answer", "id": 1,
                                    "params": {"request_id": request["request_id"], "result": {"approve": True}}},
                                   headers={**tcp_daemon.headers(), **({"X-Client-Id": borrowed} if borrowed else {})})
        assert response.status_code == 403 and response.json()["error"]["code"] == -32001
    # Alice's own stream shows her id; she can answer.
    own = next(e for e in alice.events(since=0, reconnect=False) if e["type"] == "permission_request")
    assert own["originator"]["client_id"] == alice.client_id
    assert alice.call("permission.answer", request_id=request["request_id"], result={"approve": True})


def test_no_secret_in_any_file_the_daemon_wrote(subprocess_daemon):
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0", "--log-level", "debug")
    ids = set()
    for kind in ("repl", "web"):
        client = daemon.client(kind)
        client.call("echo.ping", hello="world")
        request = client.call("permission.demo", tool="Bash", input={})
        client.call("permission.refresh_timeout", request_id=request["request_id"], extend_s=5)
        client.call("permission.answer", request_id=request["request_id"], result={"approve": False})
        ids.add(client.client_id)
    ping(daemon, without_auth(daemon, Authorization="Bearer " + daemon.token[::-1]))
    ping(daemon, without_auth(daemon, Authorization=daemon.token))
    assert cli("daemon", "stop", "--data-dir", str(daemon.data_dir)).returncode == 0
    daemon.process.wait(10)
    secrets = [daemon.token, *ids]
    for root, _, files in os.walk(daemon.data_dir):
        for name in files:
            path = os.path.join(root, name)
            if name == "daemon_token":
                continue
            content = open(path, "rb").read()
            for secret in secrets:
                assert secret.encode() not in content, f"{secret[:6]}... found in {path}"
    stdout, stderr = daemon.process.stdout.read(), daemon.process.stderr.read()
    for secret in ids:
        assert secret not in stdout + stderr
