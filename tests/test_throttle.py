"""Guessing the token, and locking the owner out (RFC 0002 §4; issue 12 finding 3).

Every local uid, and every web page the owner visits, can reach a loopback port. Before,
three requests with no token or a wrong one, from anyone, made the owner's right token get
429 for 60 s; a rotation did it by itself; and 127.x.y.z source addresses dodged the limit.
Here: the right token is never refused, only a wrong token is a guess, and every loopback
address is one peer for the guess limit.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cc_daemon.auth import TokenStore
from cc_daemon.throttle import LOOPBACK, Throttle, peer_key
from cc_daemon.transport.servers import Limits
from helpers.clock import FakeClock
from helpers.docs import rfc_text
from helpers.outsider import audit_lines, send, target

WRONG = "A" * 43
#: Any address of 127.0.0.0/8: every local process may connect from any of them.
loopback_v4 = st.ip_addresses(network="127.0.0.0/8").map(str)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def running(make_daemon, clock):
    return make_daemon("tcp", clock=clock)


def statuses(running, token, sources) -> list[int]:
    return [send(running, token, source=source).status for source in sources]


# -- the owner is never locked out ------------------------------------------------------------
others = st.lists(st.tuples(st.sampled_from(["missing", "wrong", "img"]), loopback_v4), min_size=3, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(failures=others)
def test_whatever_others_send_the_right_token_is_answered(running, clock, failures):
    for kind, source in failures:
        if kind == "img":  # a web page's <img src=http://127.0.0.1:PORT/events>: no token, no Origin
            answer = send(running, None, source=source, path="/events", versioned=False)
        else:
            answer = send(running, None if kind == "missing" else WRONG, source=source)
        assert answer.status in (401, 429)
    assert send(running, running.token).json()["result"] == "pong"
    clock.now += 60  # every minute again, as the issue found
    for kind, source in failures:
        send(running, None if kind == "missing" else WRONG, source=source)
    assert send(running, running.token, source=failures[-1][1]).json()["result"] == "pong"


def test_a_missing_token_is_not_a_guess(running):
    for _ in range(5):
        img = send(running, None, path="/events", versioned=False)
        assert img.status == 401 and img.json() == {"error": "unauthenticated"}
    # Nothing was counted: a wrong token still has its three tries before the lockout.
    assert statuses(running, WRONG, ["127.0.0.1"] * 4) == [401, 401, 401, 429]
    assert send(running, None).status == 401  # nor is it refused as a guess during the lockout


def test_an_unfinished_request_is_not_an_authentication_failure(make_daemon):
    """Requests cut off by the header deadline were answered (to nobody) as wrong tokens."""
    running = make_daemon("tcp", limits=Limits(request_timeout_s=0.2))
    for _ in range(3):
        with socket.create_connection(target(running), timeout=10) as partial:
            partial.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + WRONG.encode()
                            + b"\r\nContent-Length: 2\r\n")  # the blank line never comes
            assert partial.recv(1024) == b""  # cut off at the deadline, without an answer
    assert audit_lines(running.data_dir) == []
    assert statuses(running, WRONG, ["127.0.0.1"] * 4) == [401, 401, 401, 429]


# -- the guess limit ---------------------------------------------------------------------------
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sources=st.lists(loopback_v4, min_size=59, max_size=59, unique=True))
def test_the_guess_limit_holds_across_every_loopback_address(running, clock, sources):
    """Before: 59 addresses, 177 guesses in 0.1 s, no lockout."""
    clock.now += 60  # whatever an earlier example locked has ended
    answers = [send(running, WRONG, source=source) for source in sources]
    assert [answer.status for answer in answers] == [401] * 3 + [429] * 56
    assert all(int(answer.headers["Retry-After"]) == 60 for answer in answers[3:])
    assert send(running, running.token, source=sources[-1]).json()["result"] == "pong"


def test_the_lockout_lasts_60_s_and_refusals_during_it_do_not_extend_it(running, clock):
    assert statuses(running, WRONG, ["127.0.0.1"] * 3) == [401] * 3
    clock.now += 59.5
    held = send(running, WRONG, source="127.0.0.9")
    assert held.status == 429 and held.headers["Retry-After"] == "1"
    clock.now += 0.5
    assert statuses(running, WRONG, ["127.0.0.9"] * 4) == [401, 401, 401, 429]
    outcomes = [(line["outcome"], line["reason"]) for line in audit_lines(running.data_dir)]
    one_lockout = [("denied", "wrong bearer token")] * 3 + [("rate_limited", "locked out after repeated failures")]
    assert outcomes == one_lockout * 2


def test_failures_spread_over_more_than_the_window_do_not_lock_out(running, clock):
    for _ in range(5):
        assert statuses(running, WRONG, ["127.0.0.1"] * 2) == [401, 401]
        clock.now += 10


# -- rotation ----------------------------------------------------------------------------------
def test_streams_reconnecting_after_a_rotation_lock_nobody_out(running):
    """Before: three live streams reconnecting once each with the old token made the new
    token get 429."""
    old = running.token
    streams = [running.get("/events", stream=True, timeout=(5, 10)) for _ in range(3)]
    for stream in streams:
        assert stream.status_code == 200
    assert running.rpc("system.rotate_token")["result"] == {"rotated": True}
    for stream in streams:
        assert b"".join(stream.iter_content(chunk_size=None)).startswith(b"retry:")  # ended by the daemon
    reconnects = [send(running, old, path="/events") for _ in streams]
    assert [(answer.status, answer.json()) for answer in reconnects] == [(401, {"error": "token rotated"})] * 3
    assert all(old.encode() not in answer.body for answer in reconnects)
    running.token = (running.data_dir / "daemon_token").read_text().strip()
    assert running.rpc("system.ping")["result"] == "pong"
    # They were not guesses: a wrong token still has all of its three tries.
    assert statuses(running, WRONG, ["127.0.0.1"] * 4) == [401, 401, 401, 429]
    assert [line["reason"] for line in audit_lines(running.data_dir)].count("token rotated") == 3


def test_the_previous_token_is_only_recognised_for_the_notice_period(running, clock):
    old = running.token
    running.rpc("system.rotate_token")
    clock.now += TokenStore.ROTATED_NOTICE_S - 1
    assert send(running, old).json() == {"error": "token rotated"}
    clock.now += 1
    assert [send(running, old).status for _ in range(4)] == [401, 401, 401, 429]
    assert send(running, old).json() == {"error": "rate limited"}


def test_a_hand_edited_token_file_retires_the_previous_token_too(running):
    old = running.token
    token_file = running.data_dir / "daemon_token"
    replacement = token_file.with_name("replacement")
    replacement.write_text("N" * 43 + "\n")
    replacement.chmod(0o600)
    replacement.replace(token_file)
    assert send(running, "N" * 43).json()["result"] == "pong"  # the new one is read at its first use
    assert send(running, old).json() == {"error": "token rotated"}


# -- the key ------------------------------------------------------------------------------------
@given(st.one_of(st.ip_addresses(network="127.0.0.0/8"), st.just(ipaddress.ip_address("::1")),
                 st.ip_addresses(network="127.0.0.0/8").map(lambda v4: ipaddress.ip_address(f"::ffff:{v4}"))))
def test_every_loopback_address_is_one_peer(address):
    assert peer_key(str(address)) == LOOPBACK


@given(st.ip_addresses().filter(lambda address: not address.is_loopback
                                and not getattr(address, "ipv4_mapped", None)))
def test_any_other_address_is_its_own_peer(address):
    assert peer_key(str(address)) == str(address)


def test_throttle_memory_is_bounded_and_expires(clock):
    throttle = Throttle(max_peers=100, clock=clock)
    for i in range(1000):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert throttle.size() <= 200
    for _ in range(3):
        throttle.record_failure("victim")
    assert throttle.retry_after("victim") == pytest.approx(60.0)
    clock.now += 60
    assert throttle.retry_after("victim") is None



def test_rfc_0002_states_the_numbers_the_throttle_uses():
    text, throttle = rfc_text("0002"), Throttle()
    assert (f"{['No', 'One', 'Two', 'Three'][throttle.max_failures]} guesses from one peer within "
            f"{throttle.window_s:g} s lock that peer out for {throttle.lockout_s:g} s") in text
    assert f"for {TokenStore.ROTATED_NOTICE_S / 60:g} minutes after `rotate-token`" in text
    assert f"at most {throttle.max_peers} peers each" in text
