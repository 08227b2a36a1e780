"""The Python client against real daemons, over TCP and the Unix socket.

Covers discovery, the client id kept per kind, every typed error, calls / notifications /
batches, and the event stream: filters, gaps, the originator's private view, and
reconnection after a token rotation and across daemon restarts with nothing lost or repeated.
"""

from __future__ import annotations

import signal
import socket
import stat
import threading

import pytest

from cc_daemon import API_VERSION_HEADER
from cc_daemon.client import (Client, EventGap, InvalidParams, InvalidRequest, MethodNotFound, NoAnswer,
                              NotOriginator, NotRunning, RateLimited, RuntimeUnavailable,
                              SessionLimit, SessionNotAccepting, SessionNotFound, Unauthenticated,
                              UnknownRequest, VersionMismatch, discover)

from helpers.daemons import spawn_daemon, wait_for


def connect(running, kind="test", **kwargs) -> Client:
    """A client found through the daemon's discovery file, keeping its id under its data dir."""
    return Client.connect(data_dir=running.data_dir, kind=kind, **kwargs)


def take(stream, count):
    return [next(stream) for _ in range(count)]


# -- connecting and identity ----------------------------------------------------------------
def test_connect_through_discovery_file(daemon):
    endpoint, info = discover(daemon.data_dir)
    assert endpoint.address == daemon.address
    assert endpoint.token == daemon.token  # read from the token file on TCP, None on the socket
    with connect(daemon) as client:
        assert client.ping() == "pong"
        assert client.status()["address"] == daemon.address


def test_connect_with_explicit_address_and_token(daemon):
    with Client.connect(daemon.address, token=daemon.token, data_dir=daemon.data_dir) as client:
        assert client.call("system.ping") == "pong"


def test_client_id_is_saved_per_kind_with_private_modes_and_resumed(daemon):
    with connect(daemon, kind="repl") as client:
        assert client.client_id is None
        client.ping()
        minted = client.client_id
    id_file = daemon.data_dir / "clients" / "repl.id"
    assert id_file.read_text().strip() == minted
    assert stat.S_IMODE(id_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(id_file.parent.stat().st_mode) == 0o700
    with connect(daemon, kind="repl") as again, connect(daemon, kind="web") as other:
        again.ping()
        other.ping()
        assert again.client_id == minted
        assert other.client_id not in (None, minted)


def test_resumed_id_keeps_the_originator_role(tcp_daemon):
    with connect(tcp_daemon, kind="driver") as first:
        request = first.permissions.demo("Bash", {"command": "ls"}, timeout_s=60)
    with connect(tcp_daemon, kind="driver") as later:
        assert [p["request_id"] for p in later.permissions.pending()] == [request["request_id"]]
        assert later.permissions.approve(request["request_id"])["answer"] == {"approve": True}


def test_kind_must_be_a_plain_word(tcp_daemon):
    with pytest.raises(ValueError):
        connect(tcp_daemon, kind="../escape")


def test_no_daemon_is_not_running(tmp_path):
    with pytest.raises(NotRunning, match="discovery file"):
        Client.connect(data_dir=tmp_path)
    with pytest.raises(NotRunning, match="Connection refused"):
        Client.connect("tcp://127.0.0.1:1", data_dir=tmp_path, persist_id=False).ping()


def test_a_silent_peer_is_no_answer(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts into the backlog, never answers
        port = listener.getsockname()[1]
        client = Client.connect(f"tcp://127.0.0.1:{port}", data_dir=tmp_path, persist_id=False, timeout=0.3)
        with pytest.raises(NoAnswer):
            client.ping()


# -- HTTP-level refusals ----------------------------------------------------------------------
def test_wrong_token_then_lockout(tcp_daemon):
    client = Client.connect(tcp_daemon.address, token="x" * 43, data_dir=tcp_daemon.data_dir, persist_id=False)
    for _ in range(3):
        with pytest.raises(Unauthenticated) as refused:
            client.ping()
        assert refused.value.status == 401 and refused.value.body == {"error": "unauthenticated"}
    with pytest.raises(RateLimited) as limited:
        client.ping()
    assert limited.value.status == 429 and limited.value.retry_after > 0


def test_version_mismatch_names_both_versions(daemon):
    with connect(daemon) as client:
        with pytest.raises(VersionMismatch) as mismatch:
            client.request("POST", "/rpc", headers={API_VERSION_HEADER: "99"}, body=b"{}")
    assert mismatch.value.expected == "0"
    assert "'0'" in str(mismatch.value)


# -- JSON-RPC -----------------------------------------------------------------------------------
def test_typed_errors_carry_code_message_and_data(daemon):
    with connect(daemon) as client:
        with pytest.raises(MethodNotFound) as missing:
            client.call("no.such")
        assert missing.value.data == {"method": "no.such"}
        with pytest.raises(InvalidParams) as invalid:
            client.call("permission.answer", request_id="pr_x")
        assert invalid.value.code == -32602 and invalid.value.data["field"] == "result"
        request_id = client.permissions.demo()["request_id"]
        client.permissions.deny(request_id)
        with pytest.raises(UnknownRequest) as resolved:
            client.permissions.approve(request_id)
        assert resolved.value.data == {"request_id": request_id, "state": "answered"}


def test_session_errors_are_typed_too(make_daemon, tmp_path):
    running = make_daemon(max_sessions=1)
    with connect(running) as client:
        with pytest.raises(SessionNotFound) as missing:
            client.sessions.get("s_nosuchsession")
        assert missing.value.code == -32010
        with pytest.raises(RuntimeUnavailable) as unknown:
            client.sessions.create("no-such-runtime", tmp_path)
        assert unknown.value.data["runtime"] == "no-such-runtime"
        session_id = client.sessions.create("demo", tmp_path)["session_id"]
        with pytest.raises(SessionLimit):
            client.sessions.create("demo", tmp_path)
        client.sessions.close(session_id)
        with pytest.raises(SessionNotAccepting):
            client.sessions.send(session_id, "hello")


def test_only_the_originator_may_answer(daemon):
    with connect(daemon, kind="driver") as driver, connect(daemon, kind="watcher") as watcher:
        request_id = driver.permissions.demo("Bash", {"command": "ls"}, timeout_s=60)["request_id"]
        with pytest.raises(NotOriginator) as refused:
            watcher.permissions.deny(request_id)
        assert refused.value.code == -32001 and refused.value.data == {"request_id": request_id}
        assert watcher.permissions.pending() == []
        answered = driver.permissions.answer(request_id, False, reason="not now")
        assert answered["answer"] == {"approve": False, "reason": "not now"}
        assert driver.permissions.get(request_id)["state"] == "answered"


def test_positional_params_and_the_method_name_as_a_param(daemon):
    with connect(daemon) as client:
        request = client.call("permission.demo", "Write", {"path": "x"})
        assert client.permissions.get(request["request_id"])["tool"] == "Write"
        assert client.call("echo.ping", method="m")["echo"] == {"method": "m"}
        with pytest.raises(TypeError):
            client.call("permission.demo", "Write", tool="Bash")


def test_notification_runs_and_answers_nothing(daemon):
    with connect(daemon) as client:
        since = client.last_event_id()
        assert client.notify("echo.ping", note="n1") is None
        event = next(iter(client.events(since, types=["ping_received"])))
        assert event["data"]["params"] == {"note": "n1"}


def test_batch_returns_results_and_errors_in_order(daemon):
    with connect(daemon) as client:
        results = client.batch([("system.ping", None), ("no.such", {}), ("echo.ping", {"n": 2})])
        assert results[0] == "pong"
        assert isinstance(results[1], MethodNotFound)
        assert results[2]["echo"] == {"n": 2}
        with pytest.raises(InvalidRequest):
            client.batch([])


# -- events -------------------------------------------------------------------------------------
def test_replay_then_live_tail_with_type_filter(daemon):
    with connect(daemon) as client:
        since = client.last_event_id()
        for n in range(3):
            client.call("echo.ping", n=n)
        with client.events(since, types=["ping_received"]) as stream:
            replayed = take(stream, 3)
            client.call("permission.demo", timeout_s=60)  # filtered out
            client.call("echo.ping", n=3)
            live = next(stream)
    assert [e["data"]["params"]["n"] for e in replayed + [live]] == [0, 1, 2, 3]
    ids = [e["id"] for e in replayed + [live]]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert stream.last_id == live["id"]


def test_events_without_since_start_now(daemon):
    with connect(daemon) as client:
        client.call("echo.ping", old=True)
        stream = client.events(types=["ping_received"])
        client.call("echo.ping", old=False)
        assert next(stream)["data"]["params"] == {"old": False}
        stream.close()
        assert list(stream) == []


def test_originator_sees_its_id_only_in_its_own_stream(daemon):
    with connect(daemon, kind="a") as mine, connect(daemon, kind="b") as theirs:
        mine.ping()
        since = mine.last_event_id()
        mine.call("echo.ping")
        own = next(iter(mine.events(since)))
        seen_by_other = next(iter(theirs.events(since)))
    assert own["id"] == seen_by_other["id"]
    assert own["originator"]["client_id"] == mine.client_id and mine.is_originator(own)
    assert "client_id" not in seen_by_other["originator"] and not theirs.is_originator(seen_by_other)
    assert seen_by_other["originator"]["client_ref"] == own["originator"]["client_ref"]


def test_gap_is_an_event_or_an_exception_and_iteration_continues(make_daemon):
    running = make_daemon("tcp", retention_events=4, event_buffer=4)
    with connect(running) as client:
        for n in range(10):
            client.call("echo.ping", n=n)
        newest = client.last_event_id()
        wait_for(lambda: running.daemon.bus.oldest_id() == newest - 3, message="retention to keep 4 events")
        gap = next(iter(client.events(0)))
        assert gap["type"] == "gap"
        assert gap["data"] == {"missed_from": 1, "missed_to": newest - 4, "reason": "retention_prune"}
        assert gap["id"] == newest - 4
        stream = client.events(0, raise_on_gap=True)
        with pytest.raises(EventGap) as raised:
            next(stream)
        assert (raised.value.missed_from, raised.value.missed_to) == (1, newest - 4)
        assert next(stream)["id"] == newest - 3  # the same stream goes on after the hole


def test_reconnects_with_a_rotated_token_without_loss(tcp_daemon):
    notes: list[str] = []
    with connect(tcp_daemon) as client, connect(tcp_daemon, kind="admin") as admin:
        since = client.last_event_id()
        stream = client.events(since, types=["ping_received"], on_reconnect=notes.append)
        admin.call("echo.ping", n=0)
        assert next(stream)["data"]["params"] == {"n": 0}
        assert admin.call("system.rotate_token") == {"rotated": True}  # ends streams opened with the old token
        admin.refresh_endpoint()
        for n in (1, 2):
            admin.call("echo.ping", n=n)
        rest = take(stream, 2)
    assert [e["data"]["params"]["n"] for e in rest] == [1, 2]
    assert any("reconnected" in note for note in notes)
    assert client.endpoint.token == (tcp_daemon.data_dir / "daemon_token").read_text().strip()


def test_a_client_still_holding_the_rotated_token_is_told_so(tcp_daemon):
    with Client.connect(tcp_daemon.address, token=tcp_daemon.token, data_dir=tcp_daemon.data_dir) as stale, \
            connect(tcp_daemon, kind="admin") as admin:
        assert admin.call("system.rotate_token") == {"rotated": True}
        with pytest.raises(Unauthenticated) as refused:
            stale.ping()
    assert refused.value.body == {"error": "token rotated"} and "token was rotated" in str(refused.value)
    assert tcp_daemon.token not in str(refused.value)


def test_explicit_token_is_not_replaced(tcp_daemon):
    client = Client.connect(tcp_daemon.address, token=tcp_daemon.token, data_dir=tcp_daemon.data_dir)
    assert client.refresh_endpoint() is False


# -- across daemon restarts -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("listen", ["unix", "tcp-fixed", "tcp-any"])
@pytest.mark.parametrize("stop", ["graceful", "kill"])
def test_stream_survives_restarts_without_loss_or_duplicates(subprocess_daemon, listen, stop):
    extra = {"unix": (), "tcp-fixed": ("--listen", f"tcp://127.0.0.1:{free_port()}"),
             "tcp-any": ("--listen", "tcp://127.0.0.1:0")}[listen]
    first = subprocess_daemon(*extra)
    received: list[dict] = []
    notes: list[str] = []
    with connect(first) as client:
        stream = client.events(0, types=["ping_received", "shutdown"], on_reconnect=notes.append,
                               max_backoff_s=0.5)
        reader = threading.Thread(target=lambda: received.extend(stream), daemon=True)
        reader.start()
        for n in range(5):
            client.call("echo.ping", n=n)
        wait_for(lambda: len(received) >= 5, message="events before the restart")
        if stop == "graceful":
            client.call("system.shutdown")
        else:
            first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        wait_for(lambda: notes, message="the stream noticing the daemon is gone")
        process, _ = spawn_daemon(first.data_dir, *extra)
        try:
            with connect(first, kind="publisher") as publisher:
                for n in range(5, 10):
                    publisher.call("echo.ping", n=n)
            wait_for(lambda: len([e for e in received if e["type"] == "ping_received"]) >= 10, 15,
                     message="events after the restart")
            stream.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(10)
            for pipe in (process.stdout, process.stderr):
                pipe.close()
    pings = [e for e in received if e["type"] == "ping_received"]
    assert [e["data"]["params"]["n"] for e in pings] == list(range(10))
    ids = [e["id"] for e in pings]
    assert ids == sorted(set(ids)), "ids must grow across the restart, each seen once"
    assert [e["type"] for e in received].count("shutdown") == (1 if stop == "graceful" else 0)
    assert any("reconnected" in note for note in notes)
