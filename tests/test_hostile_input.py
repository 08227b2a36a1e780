"""Hostile input at the JSON-RPC boundary, over the wire (issue 12, findings 5, 6 and 8).

What strict JSON can say but the daemon cannot pass on (a lone surrogate, ``1e400``, a
nesting of hundreds), what the kernel cannot take (a NUL in a path, an argument or an
environment variable; a path longer than it takes), and batches that cost far more than they
weigh. Each gets a JSON-RPC error that names what is wrong, before any state changes or any
event is published; nothing a client (or a runtime) sends wedges a session, drops a
connection, or costs the daemon unbounded memory or CPU.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import pytest
import requests
import requests_unixsocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from cc_daemon.json_values import MAX_DEPTH
from cc_daemon.runtimes.protocol import ProtocolError, decode
from cc_daemon.transport.servers import Limits

from helpers.daemons import Running
from helpers.frontend import Watcher, client_of, wait_state
from helpers.json_text import Raw, strict, wire

INF = math.inf
SURROGATE = "\ud800"


# -- the wire ----------------------------------------------------------------------------------
def request(method: str, params=None, id=1) -> dict:
    message = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return message


def send(running: Running, value, session: requests.Session | None = None, client_id: str | None = None):
    """POST ``value`` (or raw bytes) to /rpc; the strict-JSON reply (None for 204)."""
    headers = running.headers(**({"X-Client-Id": client_id} if client_id else {}))
    body = value if isinstance(value, bytes) else wire(value)
    response = (session or running.http).post(running.base_url + "/rpc", data=body, headers=headers, timeout=30)
    assert response.status_code in (200, 204, 403), response.text[:300]
    return strict(response.content) if response.content else None


def assert_invalid_params(reply: dict, field: str) -> None:
    assert "error" in reply, reply
    assert reply["error"]["code"] == -32602, reply["error"]
    assert reply["error"]["data"]["field"] == field, reply["error"]
    assert field in reply["error"]["message"]


def last_event_id(running: Running) -> int:
    return send(running, request("events.query", {"limit": 1}))["result"]["last_id"]


def demo_session(running: Running, cwd: Path, kind: str = "repl"):
    client = client_of(running, kind)
    session_id = client.call("session.create", runtime="demo", cwd=str(cwd))["session_id"]
    wait_state(client, session_id, "idle")
    return client, session_id


def turn_completes(client, session_id: str, text: str = "hello") -> None:
    events = list(client.sessions.turn(session_id, text, read_timeout=20))
    assert events[-1]["type"] == "turn_done" and events[-1]["data"]["status"] == "completed", events[-1]


# -- finding 5: input that cannot be encoded wedges no session ---------------------------------
def test_a_turn_with_a_lone_surrogate_is_refused_before_it_is_queued_and_the_session_stays_usable(
        tcp_daemon, tmp_path):
    client, session_id = demo_session(tcp_daemon, tmp_path)
    before = last_event_id(tcp_daemon)
    reply = send(tcp_daemon, request("session.send", {"session_id": session_id, "text": f"hi {SURROGATE}"}),
                 client_id=client.client_id)
    assert_invalid_params(reply, "text")
    assert last_event_id(tcp_daemon) == before  # no turn_queued, no turn_started
    info = client.call("session.get", session_id=session_id)
    assert info["state"] == "idle" and info["turns"] == 0
    turn_completes(client, session_id)


def test_a_session_waiting_for_permission_refuses_what_it_cannot_carry_and_then_finishes(tcp_daemon, tmp_path):
    """Queued behind a running turn, a bad send used to be acknowledged and then fail on the
    reader thread; a bad answer used to be recorded as answered with the session left waiting."""
    client, session_id = demo_session(tcp_daemon, tmp_path)
    watcher = Watcher(client, session_id)
    running_turn = client.call("session.send", session_id=session_id, text="write kept.txt hello")["turn_id"]
    request_id = watcher.wait("permission_request", turn_id=running_turn)["data"]["request_id"]
    wait_state(client, session_id, "waiting_permission")
    before = last_event_id(tcp_daemon)

    queued = send(tcp_daemon, request("session.send", {"session_id": session_id, "text": "\udfff later"}),
                  client_id=client.client_id)
    assert_invalid_params(queued, "text")
    answer = send(tcp_daemon, request("permission.answer", {"request_id": request_id,
                                                            "result": {"approve": True, "reason": SURROGATE}}),
                  client_id=client.client_id)
    assert_invalid_params(answer, "result.reason")
    by_position = send(tcp_daemon, request("permission.answer", [request_id, {"approve": True, "why": INF}]),
                       client_id=client.client_id)
    assert_invalid_params(by_position, "result.why")  # named as by name, not as "1.why"

    assert last_event_id(tcp_daemon) == before
    assert client.call("permission.get", request_id=request_id)["state"] == "pending"
    assert client.call("session.get", session_id=session_id)["state"] == "waiting_permission"
    client.call("permission.answer", request_id=request_id, result={"approve": True, "reason": "fine"})
    assert watcher.wait("turn_done", turn_id=running_turn)["data"]["status"] == "completed"
    assert (tmp_path / "kept.txt").read_text() == "hello\n"
    wait_state(client, session_id, "idle")
    turn_completes(client, session_id)
    watcher.wait("turn_done", count=2)  # the watcher's stream may trail the driver's
    assert [event["data"]["status"] for event in watcher.find("turn_done")] == ["completed", "completed"]
    watcher.close()


# Text of any Unicode with at least one lone surrogate somewhere in it.
texts_with_a_surrogate = st.tuples(st.text(max_size=20), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                                   st.text(max_size=20)).map("".join)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts_with_a_surrogate, where=st.sampled_from(["text", "message_id"]))
def test_whatever_a_send_carries_the_session_stays_usable(tcp_daemon, tmp_path_factory, text, where):
    if not hasattr(tcp_daemon, "hostile_session"):
        tcp_daemon.hostile_session = demo_session(tcp_daemon, tmp_path_factory.mktemp("cwd"))
    client, session_id = tcp_daemon.hostile_session
    params = {"session_id": session_id, "text": "fine", where: text}
    assert_invalid_params(send(tcp_daemon, request("session.send", params), client_id=client.client_id), where)
    assert client.call("session.get", session_id=session_id)["state"] == "idle"
    turn_completes(client, session_id)


# -- finding 5, the other way in: what a runtime writes ----------------------------------------
HOSTILE_RUNTIME = r'''
import json, sys
out = sys.stdout.buffer
def send(line):
    out.write(line + b"\n"); out.flush()
json.loads(sys.stdin.readline())
send(b'{"type":"ready","protocol":1,"runtime":"hostile","version":"1"}')
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "turn":
        turn = message["turn_id"].encode()
        send(b'{"type":"text","turn_id":"' + turn + b'","text":"\\ud800"}')
        send(b'{"type":"tool_start","turn_id":"' + turn + b'","tool_use_id":"u1","tool":"T","input":{"n":1e400}}')
        send(b'{"type":"text","turn_id":"' + turn + b'","text":"fine"}')
        send(b'{"type":"turn_done","turn_id":"' + turn + b'","status":"completed"}')
    elif message["type"] == "stop":
        break
'''


@pytest.mark.parametrize("line, field", [
    (b'{"type":"text","turn_id":"t","text":"\\udc00"}', "text"),
    (b'{"type":"tool_start","turn_id":"t","tool_use_id":"u","tool":"T","input":{"a":[1e400]}}', "input.a.0"),
    (b'{"type":"log","level":"info","message":"m","extra":' + b"[" * 40 + b"]" * 40 + b"}",
     "extra" + ".0" * (MAX_DEPTH - 1)),  # the first list nested past the limit
])
def test_a_runtime_line_the_daemon_cannot_pass_on_is_a_protocol_error(line, field):
    with pytest.raises(ProtocolError) as caught:
        decode(line)
    assert caught.value.reason == "bad_value" and caught.value.detail.startswith(field + ":")


def test_a_runtime_writing_values_the_daemon_cannot_pass_on_leaves_the_turn_and_the_log_whole(tcp_daemon, tmp_path):
    script = tmp_path / "hostile_runtime.py"
    script.write_text(HOSTILE_RUNTIME)
    client = client_of(tcp_daemon, "repl")
    session_id = client.call("session.create", runtime="custom", cwd=str(tmp_path),
                             args=[sys.executable, str(script)])["session_id"]
    wait_state(client, session_id, "idle")
    for _ in range(2):
        events = list(client.sessions.turn(session_id, "go", read_timeout=20))
        turn_id = events[-1]["data"]["turn_id"]
        assert events[-1]["type"] == "turn_done" and events[-1]["data"]["status"] == "completed"
    history = send(tcp_daemon, request("session.history", {"session_id": session_id}))["result"]["events"]
    errors = [event["data"] for event in history if event["type"] == "runtime_protocol_error"]
    assert [(error["reason"], error["detail"].split(":")[0]) for error in errors] == \
        [("bad_value", "text"), ("bad_value", "input.n")] * 2
    chunks = [event["data"]["text"] for event in history if event["type"] == "text_chunk"
              and event["data"]["turn_id"] == turn_id]
    assert chunks == ["fine"]
    assert client.call("session.get", session_id=session_id)["state"] == "idle"


# -- finding 8: errors that are JSON-RPC errors --------------------------------------------------
def nested(depth: int, leaf="x"):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_deep_nesting_in_a_param_is_invalid_params_and_neither_the_connection_nor_the_batch_is_lost(daemon):
    keep_alive = requests_unixsocket.Session()  # one connection, over either transport
    deep = Raw(b"[" * 900 + b"]" * 900)  # short of the parser's limit (~990), far past the validator's
    deep_answer = request("permission.answer", {"request_id": "pr_1", "result": {"approve": deep}}, id="deep")
    reply = send(daemon, deep_answer, keep_alive)
    assert reply["error"]["code"] == -32602 and reply["id"] == "deep"
    assert reply["error"]["data"]["field"] == "result.approve" + ".0" * (MAX_DEPTH - 2)
    assert "nested deeper" in reply["error"]["data"]["reason"]
    batch = send(daemon, [deep_answer, request("system.ping", id=2)], keep_alive)
    assert [(item["id"], item.get("error", {}).get("code")) for item in batch] == [("deep", -32602), (2, None)]
    assert send(daemon, request("system.ping"), keep_alive)["result"] == "pong"


@pytest.mark.parametrize("bad_id", [INF, -INF, SURROGATE, f"ok{SURROGATE}"], ids=["1e400", "-1e400", "lone", "inner"])
def test_an_id_strict_json_cannot_write_is_invalid_request_answered_with_a_null_id(daemon, bad_id):
    for message in (request("system.ping", id=bad_id), {"jsonrpc": "1.0", "method": "system.ping", "id": bad_id}):
        reply = send(daemon, message)
        assert reply["error"]["code"] == -32600 and reply["id"] is None
    assert send(daemon, request("system.ping", id=bad_id))["error"]["data"] == {"field": "id"}


def test_a_method_name_with_a_lone_surrogate_is_invalid_request_and_never_echoed(daemon):
    reply = send(daemon, request(f"no.such{SURROGATE}"))
    assert reply["error"]["code"] == -32600 and reply["error"]["data"] == {"field": "method"}


def cwd_named(tmp: Path, name: bytes) -> str:
    """A symlink with a UTF-8 name to a directory whose name is ``name`` (any bytes)."""
    target = os.path.join(os.fsencode(tmp), name)
    os.mkdir(target)
    link = tmp / "link"
    link.symlink_to(os.fsdecode(target))
    return str(link)


def symlink_loop(tmp: Path) -> str:
    (tmp / "a").symlink_to(tmp / "b")
    (tmp / "b").symlink_to(tmp / "a")
    return str(tmp / "a")


def command(tmp: Path, **params) -> dict:
    return {"runtime": "command", "cwd": str(tmp), "args": ["cat"], **params}


#: (method, params given a scratch directory, the field the error must name). Each used to be
#: -32603, or (the cwd cases) a session that could not start.
UNCARRIABLE = {
    "since_ts 1e400": ("events.query", lambda tmp: {"since_ts": INF}, "since_ts"),
    "until_ts -1e400": ("events.query", lambda tmp: {"until_ts": -INF}, "until_ts"),
    "since_ts past SQLite": ("events.query", lambda tmp: {"since_ts": 2**70}, "since_ts"),
    "non-finite deep in echo": ("echo.ping", lambda tmp: {"a": [1, {"b": INF}]}, "a.1.b"),
    "surrogate in a tool input": ("permission.demo", lambda tmp: {"input": {"cmd": SURROGATE}}, "input.cmd"),
    "surrogate key": ("echo.ping", lambda tmp: {"a": {SURROGATE: 1}}, "a"),
    "NUL in cwd": ("session.create", lambda tmp: {"runtime": "demo", "cwd": f"{tmp}/\x00x"}, "cwd"),
    "4096-character cwd": ("session.create", lambda tmp: {"runtime": "demo", "cwd": "/" + "a" * 4095}, "cwd"),
    "cwd name past NAME_MAX": ("session.create", lambda tmp: {"runtime": "demo", "cwd": f"{tmp}/{'é' * 200}"}, "cwd"),
    "cwd symlink loop": ("session.create", lambda tmp: {"runtime": "demo", "cwd": symlink_loop(tmp)}, "cwd"),
    "cwd resolving to non-UTF-8": ("session.create", lambda tmp: {"runtime": "demo", "cwd": cwd_named(tmp, b"\xff")},
                                   "cwd"),
    "surrogate in cwd": ("session.create", lambda tmp: {"runtime": "demo", "cwd": f"{tmp}/{SURROGATE}"}, "cwd"),
    "NUL in an env value": ("session.create", lambda tmp: command(tmp, env={"X": "a\x00b"}), "env.X"),
    "surrogate in an env value": ("session.create", lambda tmp: command(tmp, env={"X": SURROGATE}), "env.X"),
    "NUL in an arg": ("session.create", lambda tmp: command(tmp, args=["cat", "-\x00"]), "args.1"),
    "surrogate in an arg": ("session.create", lambda tmp: command(tmp, args=[f"cat{SURROGATE}"]), "args.0"),
    "surrogate in a session id": ("session.get", lambda tmp: {"session_id": SURROGATE}, "session_id"),
}


@pytest.mark.parametrize("case", sorted(UNCARRIABLE))
def test_what_the_daemon_cannot_carry_is_invalid_params_naming_the_field_and_changes_nothing(
        tcp_daemon, tmp_path, case):
    method, params, field = UNCARRIABLE[case]
    before = last_event_id(tcp_daemon)
    assert_invalid_params(send(tcp_daemon, request(method, params(tmp_path))), field)
    assert last_event_id(tcp_daemon) == before
    assert tcp_daemon.rpc("session.list")["result"]["sessions"] == []


def test_the_kernels_limits_are_in_the_published_schemas(tcp_daemon):
    """A client validating against ``rpc.discover`` refuses what the daemon refuses for them."""
    document = send(tcp_daemon, request("rpc.discover"))["result"]
    schemas = {method["name"]: Draft202012Validator(method["x-params-schema"]) for method in document["methods"]}
    create = schemas["session.create"]
    for params in ({"runtime": "demo", "cwd": "/tmp/\x00"}, {"runtime": "demo", "cwd": "/" + "a" * 4095},
                   {"runtime": "command", "cwd": "/tmp", "env": {"X": "\x00"}},
                   {"runtime": "command", "cwd": "/tmp", "args": ["a\x00"]}):
        assert not create.is_valid(params), params
    assert create.is_valid({"runtime": "command", "cwd": "/" + "a" * 4094, "env": {"X": "é\n"}, "args": ["a b"]})
    assert not schemas["events.query"].is_valid({"since_ts": 2**70})
    assert document["info"]["x-limits"]["max_params_depth"] == MAX_DEPTH


# Any JSON strict JSON can carry (no surrogates: hypothesis's default alphabet has none).
carriable = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10)
uncarriable = st.sampled_from([INF, -INF, SURROGATE, f"a{SURROGATE}b", "\udc80", nested(MAX_DEPTH + 5)])


@st.composite
def params_with_one_bad_value(draw):
    """A params object of carriable values with one uncarriable value put somewhere in it,
    and the dotted path to where it was put."""
    params = draw(st.dictionaries(st.text(min_size=1, max_size=5), carriable, min_size=1, max_size=3))
    container, path = params, []
    for _ in range(draw(st.integers(0, 3))):
        key, child = draw(st.text(min_size=1, max_size=4)), {}
        if draw(st.booleans()):
            container[key] = child
            path.append(key)
        else:
            container[key] = [child, draw(carriable)]
            path += [key, "0"]
        container = child
    key = draw(st.text(min_size=1, max_size=4))
    container[key] = draw(uncarriable)
    return params, ".".join([*path, key])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=params_with_one_bad_value(), data=st.data())
def test_a_bad_value_anywhere_in_any_methods_params_is_refused_before_the_method_runs(tcp_daemon, case, data):
    if not hasattr(tcp_daemon, "method_names"):
        tcp_daemon.method_names = sorted(m["name"] for m in tcp_daemon.rpc("rpc.discover")["result"]["methods"])
        tcp_daemon.first_event_id = last_event_id(tcp_daemon)
    params, path = case
    method = data.draw(st.sampled_from(tcp_daemon.method_names))  # system.shutdown too: it must not run
    reply = send(tcp_daemon, request(method, params))
    assert reply["error"]["code"] == -32602, (method, reply)
    assert reply["error"]["data"]["field"].startswith(path), (path, reply)  # a deep nesting: named where it ends
    assert send(tcp_daemon, request("system.ping"))["result"] == "pong"
    assert last_event_id(tcp_daemon) == tcp_daemon.first_event_id  # nothing ran: no event was published


# -- finding 6: batches that cost far more than they weigh -------------------------------------
def limits_of(running: Running) -> dict:
    return send(running, request("rpc.discover"))["result"]["info"]["x-limits"]


def test_a_batch_over_the_cap_is_refused_whole_and_runs_nothing(daemon):
    cap = limits_of(daemon)["max_batch"]
    before = last_event_id(daemon)
    refused = send(daemon, [request("echo.ping", {"n": n}, id=n) for n in range(cap + 1)])
    assert refused == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": f"Invalid Request: a batch holds at most {cap} requests",
        "data": {"limit": cap, "got": cap + 1}}}
    assert last_event_id(daemon) == before
    answered = send(daemon, [request("echo.ping", {"n": n}, id=n) for n in range(cap)])
    assert [item["id"] for item in answered] == list(range(cap))
    assert last_event_id(daemon) == before + cap


def publish_big_events(running: Running, count: int, size: int) -> list[int]:
    """``count`` ping_received events of ``size`` bytes each; their ids."""
    first = last_event_id(running)
    for n in range(count):
        assert send(running, request("echo.ping", {"blob": str(n) * size}))["result"]["pong"] is True
    assert last_event_id(running) == first + count  # nothing else was published in between
    return list(range(first + 1, first + count + 1))


def test_results_past_the_reply_cap_are_replaced_by_an_error_and_the_reply_stays_bounded(tcp_daemon):
    cap = limits_of(tcp_daemon)["max_reply_bytes"]
    event_ids = publish_big_events(tcp_daemon, 6, 900_000)
    pages = [request("events.query", {"after_id": event_id - 1, "limit": 1}, id=event_id) for event_id in event_ids]
    response = tcp_daemon.post(wire([*pages, request("system.ping", id="ping")]), raw=True)
    replies = {item["id"]: item for item in strict(response.content)}
    fitting = cap // 900_000
    assert [len(replies[event_id]["result"]["events"]) for event_id in event_ids[:fitting]] == [1] * fitting
    for event_id in event_ids[fitting:]:
        error = replies[event_id]["error"]
        assert error["code"] == -32004 and error["data"]["limit_bytes"] == cap, error
        assert error["data"]["response_bytes"] > 900_000
    assert replies["ping"]["result"] == "pong"  # small enough for what was left
    assert len(response.content) <= cap + 1000


def test_a_single_result_past_the_reply_cap_is_an_error(make_daemon):
    running = make_daemon("tcp", limits=Limits(max_body_bytes=8 << 20))
    cap = limits_of(running)["max_reply_bytes"]
    reply = send(running, request("echo.ping", {"blob": "x" * (cap + 1)}))
    assert reply["error"]["code"] == -32004 and reply["error"]["data"]["response_bytes"] > cap
    assert send(running, request("echo.ping", {"blob": "x" * (cap - 1000)}))["result"]["pong"] is True


def process_usage(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB since the last reset, CPU seconds used) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kib = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return peak_kib / 1024, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS (Linux >= 4.0)


#: The most one request may grow the daemon's memory by: a 1 MiB body parses into at most
#: ~25 MiB of Python objects, a reply is at most 4 MiB (and is copied twice on its way out).
#: Before the caps, a 1 MiB batch of [0,0,...] took 462 MiB and 3 s of CPU (62.5 MiB reply).
MAX_REQUEST_GROWTH_MIB = 64
MAX_REQUEST_CPU_S = 2.0


def test_the_worst_batches_cost_bounded_memory_cpu_and_reply(subprocess_daemon):
    running = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    pid = running.process.pid
    cap = limits_of(running)["max_batch"]
    event_ids = publish_big_events(running, 6, 900_000)
    worst = {
        "1 MiB of [0,0,...]": b"[" + b",".join([b"0"] * ((1 << 20) // 2 - 1)) + b"]",
        "1 MiB of [{},{},...]": b"[" + b",".join([b"{}"] * ((1 << 20) // 3 - 1)) + b"]",
        f"{cap} x rpc.discover": wire([request("rpc.discover", id=n) for n in range(cap)]),
        f"{cap} x a 900 kB page": wire([request("events.query", {"after_id": event_ids[n % 6] - 1, "limit": 1}, id=n)
                                        for n in range(cap)]),
    }
    send(running, worst[f"{cap} x rpc.discover"])  # warm: jsonschema and the encoders loaded, caches filled
    measured = []
    for name, body in worst.items():
        reset_peak_rss(pid)
        rss_before, cpu_before = process_usage(pid)
        response = running.http.post(running.base_url + "/rpc", data=body, headers=running.headers(), timeout=60)
        peak, cpu = process_usage(pid)
        measured.append(f"{name}: body {len(body) / 1024:.0f} KiB, reply {len(response.content) / 1024:.1f} KiB, "
                        f"RSS +{peak - rss_before:.1f} MiB, CPU {cpu - cpu_before:.2f} s")
        assert response.status_code == 200 and len(response.content) <= (4 << 20) + (64 << 10), measured[-1]
        assert peak - rss_before < MAX_REQUEST_GROWTH_MIB and cpu - cpu_before < MAX_REQUEST_CPU_S, measured
    print("\n" + "\n".join(measured))
    assert send(running, request("system.ping"))["result"] == "pong"
