"""Permission requests over the wire: shapes, originator-only actions, timeouts, refresh, listing."""

from __future__ import annotations

import time

import pytest

from cc_daemon.client import InvalidParams, NotOriginator, UnknownRequest
from cc_daemon.daemon import Daemon, DaemonOptions
from cc_daemon.events import EventBus, Originator
from cc_daemon.permissions import PermissionStore
from cc_daemon.records import RecordsNotStored, RecordTable
from cc_daemon.storage import DataDir
from cc_daemon.timers import Scheduler
from cc_daemon.transport.addresses import ListenAddress
from helpers.daemons import cli, wait_for


@pytest.fixture
def alice(daemon):
    return daemon.client("repl")


@pytest.fixture
def bob(daemon):
    return daemon.client("web")


def events_of(client, type_: str, count: int = 1) -> list[dict]:
    found = []
    for event in client.events(since=0, reconnect=False, types=[type_]):
        found.append(event)
        if len(found) == count:
            return found
    return found


def test_demo_answer_shapes_and_events(alice):
    created = alice.call("permission.demo", tool="Bash", input={"command": "ls"}, rationale="look around")
    assert created["request_id"].startswith("pr_") and len(created["request_id"]) == 19
    assert created["originator"] == alice.client_id
    assert created["expires_at"] == pytest.approx(time.time() + 1800, abs=5)
    pending = alice.call("permission.list")["pending"]
    assert pending == [{"request_id": created["request_id"], "tool": "Bash", "input": {"command": "ls"},
                        "rationale": "look around", "expires_at": created["expires_at"]}]
    answered = alice.call("permission.answer", request_id=created["request_id"],
                          result={"approve": True, "reason": "fine", "remember": False})
    assert answered["request_id"] == created["request_id"]
    assert answered["answer"] == {"approve": True, "reason": "fine", "remember": False}
    assert answered["resolved_at"] >= created["expires_at"] - 1800
    (event,) = events_of(alice, "permission_answered")
    assert event["data"]["request_id"] == created["request_id"]
    assert alice.call("permission.list") == {"pending": []}


def test_non_originator_gets_403_and_minus_32001(daemon, alice, bob):
    created = alice.call("permission.demo")
    bob.call("system.ping")  # bob gets an id of his own
    for method, params in (("permission.answer", {"request_id": created["request_id"], "result": {"approve": True}}),
                           ("permission.refresh_timeout", {"request_id": created["request_id"], "extend_s": 60}),
                           ("permission.get", {"request_id": created["request_id"]})):
        response = daemon.post({"jsonrpc": "2.0", "method": method, "params": params, "id": 1},
                               headers={**daemon.headers(), "X-Client-Id": bob.client_id})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == -32001
        assert response.json()["error"]["data"] == {"request_id": created["request_id"]}
    assert bob.call("permission.list") == {"pending": []}  # only one's own


def test_an_unknown_id_and_someone_elses_get_the_same_answer(daemon, alice, bob):
    created = alice.call("permission.demo")
    answers = []
    for request_id in (created["request_id"], "pr_0000000000000000"):  # alice's, and nobody's
        for method, params in (("permission.answer", {"result": {"approve": True}}), ("permission.get", {}),
                               ("permission.refresh_timeout", {"extend_s": 60})):
            response = daemon.post({"jsonrpc": "2.0", "method": method, "params": {"request_id": request_id, **params},
                                    "id": 1}, headers={**daemon.headers(), "X-Client-Id": bob.client_id})
            error = response.json()["error"]
            assert error["data"] == {"request_id": request_id}
            answers.append((method, response.status_code, error["code"], error["message"]))
    assert answers[:3] == answers[3:] and {code for _, _, code, _ in answers} == {-32001}
    with pytest.raises(NotOriginator):  # nobody is the originator of an id that does not exist
        alice.call("permission.answer", request_id="pr_0000000000000000", result={"approve": True})


def test_only_the_originator_learns_that_its_request_is_resolved(alice, bob):
    created = alice.call("permission.demo")
    alice.call("permission.answer", request_id=created["request_id"], result={"approve": False})
    with pytest.raises(UnknownRequest) as resolved:
        alice.call("permission.answer", request_id=created["request_id"], result={"approve": True})
    assert resolved.value.data == {"request_id": created["request_id"], "state": "answered"}
    # A non-originator cannot tell resolved from pending: still "not the originator".
    with pytest.raises(NotOriginator):
        bob.call("permission.answer", request_id=created["request_id"], result={"approve": True})
    assert alice.call("permission.get", request_id=created["request_id"])["state"] == "answered"


@pytest.mark.parametrize("result", [{"approve": "yes"}, {}, {"approve": True, "extra": 1}, "approve", None,
                                    {"approve": True, "reason": 5}])
def test_answer_result_must_be_the_documented_object(alice, result):
    created = alice.call("permission.demo")
    with pytest.raises(InvalidParams):
        alice.call("permission.answer", request_id=created["request_id"], result=result)
    assert alice.call("permission.list")["pending"][0]["request_id"] == created["request_id"]


def test_naming_another_originator_is_refused(alice):
    with pytest.raises(InvalidParams) as refused:
        alice.call("permission.demo", originator="f" * 32)
    assert refused.value.data["field"] == "originator"
    assert alice.call("permission.demo", originator=alice.client_id)["originator"] == alice.client_id


def test_expiry_auto_denies_within_100_ms(alice):
    created = alice.call("permission.demo", timeout_s=0.3)
    (event,) = events_of(alice, "permission_timeout")
    assert event["data"] == {"request_id": created["request_id"], "auto_answer": "deny"}
    assert 0 <= event["ts"] - created["expires_at"] < 0.1
    assert alice.call("permission.get", request_id=created["request_id"])["state"] == "timed_out"


@pytest.mark.parametrize("extend_s", [0, -5, 10**9, "60"])
def test_refresh_takes_a_positive_bounded_extension(alice, extend_s):
    created = alice.call("permission.demo")
    with pytest.raises(InvalidParams):
        alice.call("permission.refresh_timeout", request_id=created["request_id"], extend_s=extend_s)


def test_refresh_extends_and_is_capped_24h_after_creation(alice):
    created = alice.call("permission.demo", timeout_s=0.5)
    refreshed = alice.call("permission.refresh_timeout", request_id=created["request_id"], extend_s=600)
    assert refreshed["expires_at"] == pytest.approx(created["expires_at"] + 600)
    (event,) = events_of(alice, "permission_timeout_extended")
    assert event["data"]["expires_at"] == refreshed["expires_at"]
    # The old 0.5 s deadline must not fire any more.
    wait_for(lambda: time.time() > created["expires_at"] + 0.2, 5, message="old deadline passed")
    assert alice.call("permission.get", request_id=created["request_id"])["state"] == "pending"
    for _ in range(200):
        capped = alice.call("permission.refresh_timeout", request_id=created["request_id"], extend_s=86400)
    detail = alice.call("permission.get", request_id=created["request_id"])
    assert capped["expires_at"] == pytest.approx(detail["created_at"] + 86400)


def test_reconnecting_client_gets_its_pending_requests_back(daemon):
    first = daemon.client("repl")
    created = first.call("permission.demo")
    resumed = daemon.client("repl")
    resumed.client_id = first.client_id  # the same persisted id, a new process
    assert [p["request_id"] for p in resumed.call("permission.list")["pending"]] == [created["request_id"]]
    (event,) = events_of(resumed, "permission_request")
    assert event["originator"]["client_id"] == first.client_id


def test_pending_requests_survive_a_restart(subprocess_daemon):
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    alice = daemon.client("repl")
    kept = alice.call("permission.demo", tool="Write", input={"path": "a.txt"}, rationale="save")
    expiring = alice.call("permission.demo", timeout_s=3)
    assert cli("daemon", "stop", "--data-dir", str(daemon.data_dir)).returncode == 0
    assert time.time() < expiring["expires_at"], "the daemon took too long to stop for this test's premise"
    wait_for(lambda: time.time() > expiring["expires_at"] + 0.1, 10, message="deadline passes while down")
    again = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=daemon.data_dir)
    resumed = again.client("repl")
    resumed.client_id = alice.client_id
    pending = resumed.call("permission.list")["pending"]
    assert [p["request_id"] for p in pending] == [kept["request_id"]]
    assert pending[0]["input"] == {"path": "a.txt"} and pending[0]["expires_at"] == kept["expires_at"]
    wait_for(lambda: resumed.call("permission.get", request_id=expiring["request_id"])["state"] == "timed_out",
             5, message="the request whose deadline passed while down times out")
    answered = resumed.call("permission.answer", request_id=kept["request_id"], result={"approve": True})
    assert answered["answer"] == {"approve": True}
    other = again.client("web")
    with pytest.raises(NotOriginator):
        other.call("permission.refresh_timeout", request_id=kept["request_id"])


def test_a_runtimes_request_is_denied_after_a_restart(make_daemon):
    first = make_daemon("unix")
    store = first.daemon.permissions
    request = store.create(Originator("k" * 64, "r" * 16, "repl"), "Bash", {"command": "ls"},
                           session_id="s_gone", turn_id="t_1")
    first.daemon.stop()
    layout = DataDir(first.data_dir)
    second = Daemon(DaemonOptions(listen=ListenAddress.unix(layout.default_socket), data_dir=layout))
    second.start()
    try:
        cancelled = [e for e in read_all(second) if e.type == "permission_cancelled"]
        assert [e.data["request_id"] for e in cancelled] == [request.request_id]
        assert "restarted" in cancelled[0].data["reason"] and cancelled[0].session_id == "s_gone"
        assert second.permissions.pending_count() == 0
    finally:
        second.stop()


def read_all(daemon) -> list:
    subscription = daemon.bus.subscribe(0)
    events = []
    while batch := subscription.next_batch(0):
        events.extend(batch)
    subscription.close()
    return events


class RefusingTable(RecordTable):
    """A record table on a disk that fills up and frees again on command."""

    def __init__(self, database):
        super().__init__(database, "permission_requests")
        self.full = False

    def write(self, upserts=None, deletes=()):
        if self.full:
            raise RecordsNotStored("permission_requests: OperationalError: database or disk is full")
        super().write(upserts, deletes)


def test_a_full_store_refuses_new_requests_whole_and_never_undoes_an_answer(tmp_path):
    table = RefusingTable(tmp_path / "daemon.db")
    scheduler = Scheduler()
    store = PermissionStore(EventBus(), scheduler, table=table)
    alice = Originator("a" * 64, "r" * 16, "repl")
    kept = store.create(alice, "Bash", {"command": "ls"})
    table.full = True
    with pytest.raises(RecordsNotStored):
        store.create(alice, "Bash", {"command": "rm"})
    assert store.pending_count() == 1  # the refused request does not half-exist
    caller = type("Caller", (), {"client_key": alice.client_key})()
    store.answer(kept.request_id, caller, {"approve": True})  # answered, though its record stays for now
    assert store.pending_count() == 0 and kept.request_id in table.load()
    table.full = False
    store.create(alice, "Bash", {"command": "pwd"})  # the next write takes the pending delete along
    assert kept.request_id not in table.load() and len(table.load()) == 1
    scheduler.stop()
    table.close()
