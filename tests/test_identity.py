"""Client identities under pressure: an id is bound to its kind, and a flood of new ids never
pushes out the ids of clients in use (issue 12, findings 7 and 10)."""

from __future__ import annotations

import secrets

import requests

from cc_daemon.identity import ClientRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def registry(clock: Clock, **limits) -> ClientRegistry:
    return ClientRegistry(None, secrets.token_bytes(32), clock=clock, **limits)


def confirmed(clients: ClientRegistry, kind: str = "repl", peer: str = "127.0.0.1") -> str:
    """A new client that originated something (the registry keeps it); returns its id."""
    caller = clients.resolve(None, kind, "tcp", peer)
    clients.confirm(caller)
    return caller.client_id


# -- kind binding ------------------------------------------------------------------------------
def test_an_id_presented_under_another_kind_is_not_resumed_and_keeps_its_kind():
    clients = registry(Clock())
    repl_id = confirmed(clients, "repl")
    as_web = clients.resolve(repl_id, "web", "tcp", "127.0.0.1")
    assert as_web.client_id != repl_id and as_web.kind == "web"
    without_kind = clients.resolve(repl_id, None, "tcp", "127.0.0.1")
    assert without_kind.client_id == repl_id and without_kind.kind == "repl"
    assert clients.resolve(repl_id, "repl", "tcp", "127.0.0.1").kind == "repl"


def test_a_kindless_id_is_not_taken_over_by_a_kind():
    clients = registry(Clock())
    anonymous = confirmed(clients, None)
    assert clients.resolve(anonymous, "web", "tcp", "127.0.0.1").client_id != anonymous
    assert clients.resolve(anonymous, None, "tcp", "127.0.0.1").kind is None


def test_kind_binding_over_the_wire(tcp_daemon):
    def ping(**headers: str) -> requests.Response:
        response = tcp_daemon.post({"jsonrpc": "2.0", "method": "system.ping", "id": 1},
                                   headers={**tcp_daemon.headers(), **headers})
        assert response.status_code == 200
        return response

    repl_id = ping(**{"X-Client-Kind": "repl"}).headers["X-Client-Id"]
    ping(**{"X-Client-Kind": "repl", "X-Client-Id": repl_id})  # presented again: kept
    assert ping(**{"X-Client-Kind": "web", "X-Client-Id": repl_id}).headers["X-Client-Id"] != repl_id
    assert ping(**{"X-Client-Id": repl_id}).headers["X-Client-Id"] == repl_id
    assert ping(**{"X-Client-Kind": "repl", "X-Client-Id": repl_id}).headers["X-Client-Id"] == repl_id


# -- floods ------------------------------------------------------------------------------------
def test_a_flood_of_new_ids_never_evicts_a_client_in_use():
    clock = Clock()
    clients = registry(clock, max_clients=100)
    active = confirmed(clients)
    clock.now += 8
    flood = [confirmed(clients, "flood") for _ in range(1_000)]
    assert clients.resolve(active, "repl", "tcp", "127.0.0.1").client_id == active
    assert clients.count() == 100
    # The ids the full registry could not take still work from memory...
    assert clients.resolve(flood[-1], "flood", "tcp", "127.0.0.1").client_id == flood[-1]


def test_when_full_the_idle_are_evicted_least_recently_seen_first():
    clock = Clock()
    clients = registry(clock, max_clients=3, protect_recent_s=60)
    oldest, older, recent = confirmed(clients), confirmed(clients), None
    clock.now += 30
    recent = confirmed(clients)
    clock.now += 45  # oldest and older are idle now (75 s), recent is not (45 s)
    newcomer = confirmed(clients)
    assert clients.count() == 3
    assert clients.resolve(oldest, "repl", "tcp", "127.0.0.1").client_id != oldest
    for kept in (older, recent, newcomer):
        assert clients.resolve(kept, "repl", "tcp", "127.0.0.1").client_id == kept


def test_a_pinned_client_is_not_evicted_however_idle():
    clock = Clock()
    clients = registry(clock, max_clients=2, protect_recent_s=60)
    originator = clients.resolve(None, "repl", "tcp", "127.0.0.1")
    clients.confirm(originator)
    other = confirmed(clients)
    clients.in_use = lambda: {originator.client_key}
    clock.now += 3600
    confirmed(clients)
    assert clients.resolve(originator.client_id, "repl", "tcp", "127.0.0.1").client_id == originator.client_id
    assert clients.resolve(other, "repl", "tcp", "127.0.0.1").client_id != other


def test_a_client_that_could_not_be_confirmed_is_confirmed_once_there_is_room():
    clock = Clock()
    clients = registry(clock, max_clients=1, protect_recent_s=60)
    confirmed(clients)
    waiting = confirmed(clients)
    assert clients.count() == 1
    clock.now += 120  # the first one is idle now: room for the waiting one at its next request
    assert clients.resolve(waiting, "repl", "tcp", "127.0.0.1").client_id == waiting
    assert clients.count() == 1 and clients.is_known(waiting)


def test_the_daemon_pins_the_originator_of_a_pending_request_until_it_is_resolved(tcp_daemon):
    """The composition, over the wire: the registry's ``in_use`` is the permission store's
    pending originators, so a flood can never evict a client that still has to answer."""
    headers = tcp_daemon.headers(X_Client_Kind="repl")
    created = tcp_daemon.post({"jsonrpc": "2.0", "method": "permission.demo", "id": 1}, headers=headers)
    originator = created.headers["X-Client-Id"]
    registry_ = tcp_daemon.daemon.clients
    assert registry_.in_use() == {registry_.resolve(originator, "repl", "tcp", "127.0.0.1").client_key}
    answered = tcp_daemon.post({"jsonrpc": "2.0", "method": "permission.answer", "id": 2,
                                "params": {"request_id": created.json()["result"]["request_id"],
                                           "result": {"approve": False}}},
                               headers={**headers, "X-Client-Id": originator})
    assert "result" in answered.json()
    assert registry_.in_use() == set()
