"""JSON-RPC 2.0 over POST /rpc, checked against the specification's rules, on both transports."""

from __future__ import annotations

import json

import pytest


def call(method, params=None, id=1):
    message = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return message


def test_single_request_echoes_id_of_every_allowed_type(daemon):
    for request_id in (1, "abc", 2.5, None, 0, -7, "", 10**20):
        response = daemon.post(call("system.ping", id=request_id))
        assert response.status_code == 200
        assert response.json() == {"jsonrpc": "2.0", "result": "pong", "id": request_id}


def test_null_id_is_a_request_not_a_notification(daemon):
    assert daemon.post(call("system.ping", id=None)).json()["result"] == "pong"


def test_notification_gets_no_response_even_on_error(daemon):
    for message in ({"jsonrpc": "2.0", "method": "system.ping"},
                    {"jsonrpc": "2.0", "method": "no.such.method"},
                    {"jsonrpc": "2.0", "method": "permission.answer", "params": {"bad": 1}}):
        response = daemon.post(message)
        assert response.status_code == 204
        assert response.content == b""


def test_batch_answers_each_request_in_one_array(daemon):
    batch = [call("system.ping", id=1), {"jsonrpc": "2.0", "method": "echo.ping", "params": {"n": 1}},
             call("nope", id="x"), 42, call("echo.ping", {"a": [1, 2]}, id=3)]
    response = daemon.post(batch)
    assert response.status_code == 200
    replies = {json.dumps(r["id"]): r for r in response.json()}
    assert len(response.json()) == 4  # the notification gets nothing
    assert replies["1"]["result"] == "pong"
    assert replies['"x"']["error"]["code"] == -32601
    assert replies["null"]["error"]["code"] == -32600
    assert replies["3"]["result"]["echo"] == {"a": [1, 2]}


def test_empty_batch_is_one_invalid_request_error(daemon):
    response = daemon.post([])
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, dict)
    assert body["error"]["code"] == -32600 and body["id"] is None


def test_batch_of_only_notifications_returns_nothing(daemon):
    response = daemon.post([{"jsonrpc": "2.0", "method": "system.ping"}, {"jsonrpc": "2.0", "method": "x"}])
    assert response.status_code == 204 and response.content == b""


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"jsonrpc": "2.0", "method": NaN}', b"\xff\xfe",
                                  b"[1,2", b""])
def test_parse_error_has_null_id(daemon, body):
    response = daemon.post(body, raw=True)
    assert response.status_code == 200
    assert response.json()["error"]["code"] == -32700
    assert response.json()["id"] is None


@pytest.mark.parametrize("message", [
    {"jsonrpc": "1.0", "method": "system.ping", "id": 1},
    {"method": "system.ping", "id": 1},
    {"jsonrpc": "2.0", "method": 5, "id": 1},
    {"jsonrpc": "2.0", "method": "system.ping", "params": "bar", "id": 1},
    {"jsonrpc": "2.0", "method": "system.ping", "id": {"x": 1}},
    {"jsonrpc": "2.0", "method": "system.ping", "id": True},
    "a string", 7, None,
])
def test_invalid_requests(daemon, message):
    body = daemon.post(message).json()
    assert body["error"]["code"] == -32600
    assert body["error"]["message"].startswith("Invalid Request")
    expected_id = message.get("id") if isinstance(message, dict) and isinstance(message.get("id"), (int, str)) \
        and not isinstance(message.get("id"), bool) else None
    assert body["id"] == expected_id


def test_method_not_found_names_the_method(daemon):
    body = daemon.post(call("does.not.exist")).json()
    assert body["error"]["code"] == -32601
    assert body["error"]["data"] == {"method": "does.not.exist"}


def test_missing_required_param_is_invalid_params_naming_the_field(daemon):
    body = daemon.post(call("permission.answer", {"request_id": "pr_0000000000000000"})).json()
    assert body["error"]["code"] == -32602
    assert body["error"]["data"]["field"] == "result"
    assert "result" in body["error"]["message"]


def test_wrong_type_deep_in_params_names_the_path(daemon):
    body = daemon.post(call("permission.answer", {"request_id": "pr_1", "result": {"approve": "yes"}})).json()
    assert body["error"]["code"] == -32602
    assert body["error"]["data"]["field"] == "result.approve"


def test_unknown_param_is_refused(daemon):
    body = daemon.post(call("permission.list", {"everything": True})).json()
    assert body["error"]["code"] == -32602


def test_params_by_position(daemon):
    created = daemon.rpc("permission.demo", {"tool": "Bash"})
    client_id = daemon.post(call("system.ping")).headers["X-Client-Id"]
    # Positional params bind in declared order: request_id, result.
    answered = daemon.post(call("permission.answer", [created["result"]["request_id"], {"approve": True}]))
    assert answered.json()["error"]["code"] in (-32001,)  # a new anonymous client is not the originator
    assert client_id


def test_too_many_positional_params(daemon):
    body = daemon.post(call("permission.get", ["pr_1", "extra"])).json()
    assert body["error"]["code"] == -32602
    assert body["error"]["data"]["positional"] == ["request_id"]


def test_by_name_only_method_refuses_positional(daemon):
    body = daemon.post(call("echo.ping", [1])).json()
    assert body["error"]["code"] == -32602


def test_echo_ping_shape_and_event(daemon):
    result = daemon.rpc("echo.ping", {"hello": "world"})["result"]
    assert result["pong"] is True and result["echo"] == {"hello": "world"}
    assert isinstance(result["ts"], float) and result["server_uptime_s"] >= 0


def test_system_version(daemon):
    result = daemon.rpc("system.version")["result"]
    assert result["api_version"] == "0"
    assert result["transport"] == ("unix" if daemon.is_unix else "tcp")


def test_rpc_discover_lists_every_method_with_its_schema(daemon):
    document = daemon.rpc("rpc.discover")["result"]
    assert document["openrpc"].startswith("1.")
    methods = {m["name"]: m for m in document["methods"]}
    for name in ("system.ping", "system.version", "system.shutdown", "echo.ping", "rpc.discover",
                 "permission.demo", "permission.answer", "permission.refresh_timeout", "permission.list",
                 "permission.get"):
        assert name in methods, name
    answer = methods["permission.answer"]
    assert [p["name"] for p in answer["params"]][:2] == ["request_id", "result"]
    assert answer["x-params-schema"]["required"] == ["request_id", "result"]
    assert {e["code"] for e in answer["errors"]} == {-32001, -32002}
    # Every declared schema is itself a valid JSON Schema.
    from jsonschema import Draft202012Validator
    for method in document["methods"]:
        Draft202012Validator.check_schema(method["x-params-schema"])
        Draft202012Validator.check_schema(method["result"]["schema"])


def test_internal_error_leaks_nothing(daemon):
    from cc_daemon.rpc import object_schema

    def explode(call):
        raise RuntimeError("secret internal detail /etc/passwd")

    daemon.daemon.registry.method("test.explode", summary="raises", result={},
                                  params=object_schema({}))(explode)
    response = daemon.post(call("test.explode"))
    body = response.json()
    assert body["error"]["code"] == -32603
    assert "secret" not in response.text and "Traceback" not in response.text
    error_id = body["error"]["data"]["error_id"]
    log = (daemon.data_dir / "logs" / "daemon.log").read_text()
    assert error_id in log and "secret internal detail" in log


def test_keep_alive_many_calls_on_one_connection(daemon):
    import http.client
    import socket as socket_module
    if daemon.is_unix:
        sock = socket_module.socket(socket_module.AF_UNIX)
        sock.connect(daemon.address[len("unix://"):])
        connection = http.client.HTTPConnection("localhost")
        connection.sock = sock
    else:
        host, port = daemon.address[len("tcp://"):].rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port))
        connection.connect()
    first_sock = connection.sock
    for i in range(50):
        connection.request("POST", "/rpc", body=json.dumps(call("system.ping", id=i)), headers=daemon.headers())
        response = connection.getresponse()
        assert json.loads(response.read())["id"] == i
        assert connection.sock is first_sock
    connection.close()
