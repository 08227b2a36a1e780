"""Property tests: arbitrary JSON in, the specification's invariants out (in-process and over the wire).

Arbitrary means all that JSON text can say, lone surrogates (``"\\ud800"``) and numbers
beyond a double (``1e400``) included; whatever comes in, what goes out is strict JSON.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings, strategies as st

from cc_daemon.identity import Caller
from cc_daemon.rpc import Dispatcher, Registry, object_schema

from helpers.json_text import strict, wire

#: Any code point, lone surrogates included (hypothesis leaves them out by default).
any_character = st.characters(exclude_categories=())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(any_character),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
ids = st.none() | st.integers() | st.text(any_character, max_size=10) | st.floats(allow_nan=False)
methods = st.sampled_from(["add", "echo", "fail", "missing", "rpc.discover"]) | st.text(max_size=10)
params = st.none() | st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3) | \
    st.lists(json_values, max_size=3) | json_values


@st.composite
def messages(draw):
    message = {}
    if draw(st.booleans()) or draw(st.booleans()):
        message["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2]))
    message["method"] = draw(methods)
    if draw(st.booleans()):
        message["params"] = draw(params)
    if draw(st.booleans()):
        message["id"] = draw(ids)
    return message


envelopes = messages() | json_values | st.lists(messages() | json_values, max_size=6)


def make_dispatcher() -> Dispatcher:
    registry = Registry()
    registry.method("add", summary="a+b", params=object_schema({"a": {"type": "integer"}, "b": {"type": "integer"}},
                                                              ("a", "b")))(lambda call: call.params["a"] + call.params["b"])
    registry.method("echo", summary="echo", params={"type": "object"}, positional=())(lambda call: call.params)

    def fail(call):
        raise ValueError("boom")

    registry.method("fail", summary="raises")(fail)
    registry.method("rpc.discover", summary="doc")(lambda call: registry.openrpc("t", "0"))
    return Dispatcher(registry)


def is_notification(message) -> bool:
    return (isinstance(message, dict) and message.get("jsonrpc") == "2.0" and isinstance(message.get("method"), str)
            and "id" not in message and ("params" not in message or isinstance(message["params"], (dict, list))))


def check_response(response, request) -> None:
    assert response["jsonrpc"] == "2.0"
    assert ("result" in response) != ("error" in response)  # exactly one
    if "error" in response:
        error = response["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str)
        assert "boom" not in json.dumps(response)  # internal text never leaks
    valid_id = isinstance(request, dict) and "id" in request and (
        request["id"] is None or (isinstance(request["id"], (str, int, float)) and not isinstance(request["id"], bool)
                                  and echoable(request["id"])))
    assert response["id"] == (request["id"] if valid_id else None)  # echoed exactly, else null


def echoable(request_id) -> bool:
    """Whether strict JSON can write ``request_id`` back: a finite number, a string of whole code points."""
    if isinstance(request_id, float):
        return math.isfinite(request_id)
    return not isinstance(request_id, str) or not any(0xD800 <= ord(char) <= 0xDFFF for char in request_id)


CALLER = Caller("0" * 32, "k" * 64, "r" * 16, "test", "unix", "uid:0")


def handle(envelope_or_body) -> tuple[int, object]:
    """The dispatcher's reply: its status and its body, which must be strict JSON (None: no body)."""
    body = envelope_or_body if isinstance(envelope_or_body, bytes) else wire(envelope_or_body)
    reply = make_dispatcher().handle(body, CALLER)
    return reply.status, strict(reply.body) if reply.body else None


@settings(max_examples=800, deadline=None)
@given(envelopes)
def test_dispatcher_invariants(envelope):
    status, payload = handle(envelope)
    if isinstance(envelope, list) and envelope:
        answered = [m for m in envelope if not is_notification(m)]
        if not answered:
            assert status == 204 and payload is None
            return
        assert isinstance(payload, list) and len(payload) == len(answered)
        for response, request in zip(payload, answered):
            check_response(response, request)
    elif isinstance(envelope, list):
        assert payload["error"]["code"] == -32600
    elif is_notification(envelope):
        assert status == 204 and payload is None
    else:
        check_response(payload, envelope)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_dispatcher(body):
    status, payload = handle(body)  # the body decodes as JSON
    assert status in (200, 204) and (payload is None) == (status == 204)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(envelope=envelopes)
def test_live_daemon_keeps_answering_valid_json(tcp_daemon, envelope):
    response = tcp_daemon.post(wire(envelope), raw=True)
    assert response.status_code in (200, 204, 403)
    if response.status_code != 204:
        body = strict(response.content)
        for item in body if isinstance(body, list) else [body]:
            assert ("result" in item) != ("error" in item)
    assert tcp_daemon.rpc("system.ping")["result"] == "pong"
