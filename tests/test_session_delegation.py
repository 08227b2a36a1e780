"""Delegation to one's own clients (issue 15, item 5), over the wire with real daemons.

The originator of a turn (or the session's owner or approver) hands the right to answer
its permission requests in a session to one other client, named by its public
``client_ref``, and takes it back. Only the delegate and the delegator may answer; the
delegation is an event; it survives a daemon restart.
"""

from __future__ import annotations

import signal

import pytest

from cc_daemon.client import Client, DelegationRefused, Endpoint, NotOriginator
from helpers.frontend import Watcher, client_of, wait_state


def known_client(running, kind: str) -> tuple[Client, str]:
    """A client that has presented its id (so the daemon knows it by its ref), and its ref."""
    client = client_of(running, kind)
    ref = client.call("system.whoami")["client_ref"]
    assert client.call("system.whoami") == {"client_ref": ref, "kind": kind}  # the id presented again
    return client, ref


def asks(client: Client, watcher: Watcher, session_id: str) -> tuple[str, str]:
    """A demo turn from ``client`` that asks permission; its turn id and request id."""
    turn = client.call("session.send", session_id=session_id, text="run true")["turn_id"]
    return turn, watcher.wait("permission_request", turn_id=turn)["data"]["request_id"]


def approve(client: Client, request_id: str) -> dict:
    return client.call("permission.answer", request_id=request_id, result={"approve": True})


def test_a_terminal_hands_its_requests_to_a_browser_page_and_takes_them_back(tcp_daemon, tmp_path):
    terminal, terminal_ref = known_client(tcp_daemon, "repl")
    page, page_ref = known_client(tcp_daemon, "web")
    other, _ = known_client(tcp_daemon, "watcher")
    session_id = terminal.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]
    watcher = Watcher(terminal, session_id, since=0)

    turn, request = asks(terminal, watcher, session_id)
    with pytest.raises(NotOriginator):
        approve(page, request)  # not yet its to answer
    delegated = terminal.call("session.delegate", session_id=session_id, to=page_ref)
    assert delegated["delegate"] == {"client_ref": page_ref, "kind": "web"} and delegated["pending"] == [request]
    event = watcher.wait("permission_delegated")
    assert event["data"]["delegator"]["client_ref"] == terminal_ref and event["originator"]["client_ref"] == terminal_ref
    assert [p["request_id"] for p in page.call("permission.list")["pending"]] == [request]
    with pytest.raises(NotOriginator):
        approve(other, request)  # only the delegate and the delegator
    approve(page, request)
    answered = watcher.wait("permission_answered", request_id=request)["data"]
    assert answered["answered_by"] == {"client_ref": page_ref, "kind": "web", "as": "delegate"}
    assert watcher.wait("turn_done", turn_id=turn)["data"]["status"] == "completed"

    turn, request = asks(terminal, watcher, session_id)  # new requests carry who may answer them
    assert watcher.wait("permission_request", turn_id=turn)["data"]["delegate"]["client_ref"] == page_ref
    assert terminal.call("session.get", session_id=session_id)["delegations"] == [
        {"delegator": {"client_ref": terminal_ref, "kind": "repl"}, "delegate": {"client_ref": page_ref, "kind": "web"}}]
    approve(terminal, request)  # the delegator keeps the right too
    watcher.wait("turn_done", turn_id=turn)

    taken = terminal.call("session.delegate", session_id=session_id, to=None)
    assert taken["delegate"] is None and taken["previous"]["client_ref"] == page_ref
    watcher.wait("permission_delegation_revoked")
    turn, request = asks(terminal, watcher, session_id)
    assert "delegate" not in watcher.wait("permission_request", turn_id=turn)["data"]
    with pytest.raises(NotOriginator):
        approve(page, request)
    approve(terminal, request)
    watcher.wait("turn_done", turn_id=turn)
    assert terminal.call("session.get", session_id=session_id)["delegations"] == []
    watcher.close()


def test_delegations_that_cannot_be_made_are_refused_saying_why(tcp_daemon, tmp_path):
    owner, owner_ref = known_client(tcp_daemon, "repl")
    page, page_ref = known_client(tcp_daemon, "web")
    session_id = owner.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]

    def reason(client: Client, to: str | None) -> str:
        with pytest.raises(DelegationRefused) as caught:
            client.call("session.delegate", session_id=session_id, to=to)
        return caught.value.data["reason"]

    assert reason(page, owner_ref) == "no_standing"  # neither owner, approver nor a turn's originator
    assert reason(owner, "0123456789abcdef") == "unknown_client"
    assert reason(owner, owner_ref) == "self"
    assert reason(owner, None) == "not_delegated"
    assert owner.call("session.delegate", session_id=session_id, to=page_ref)["delegate"]["client_ref"] == page_ref
    history = owner.call("session.history", session_id=session_id)["events"]
    assert [e["type"] for e in history].count("permission_delegated") == 1


def test_a_delegation_survives_a_daemon_restart(subprocess_daemon, tmp_path):
    first = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    terminal, _ = known_client(first, "repl")
    page, page_ref = known_client(first, "web")
    session_id = terminal.call("session.create", runtime="demo", cwd=str(tmp_path))["session_id"]
    terminal.call("session.delegate", session_id=session_id, to=page_ref)
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(10) == 0

    second = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=first.data_dir)
    endpoint = Endpoint.from_address(second.address, second.token)
    terminal = Client(endpoint, kind="repl", client_id=terminal.client_id)
    page = Client(endpoint, kind="web", client_id=page.client_id)
    wait_state(terminal, session_id, "idle")
    watcher = Watcher(terminal, session_id, since=0)
    turn, request = asks(terminal, watcher, session_id)
    approve(page, request)
    assert watcher.wait("turn_done", turn_id=turn)["data"]["status"] == "completed"
    watcher.close()
