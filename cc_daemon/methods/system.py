"""``system.*``, ``echo.*`` and ``rpc.discover``: liveness, identity, shutdown, discovery."""

from __future__ import annotations

import time

from .. import API_VERSION, __version__
from ..rpc import Call, Registry, object_schema
from . import MethodContext

STRING = {"type": "string"}
NUMBER = {"type": "number"}

VERSION_RESULT = {
    "type": "object",
    "properties": {"version": STRING, "api_version": STRING, "python": STRING, "transport": STRING},
    "required": ["version", "api_version", "python", "transport"],
}


def register(registry: Registry, context: MethodContext) -> None:
    # Any params are accepted and ignored, as the reference does: a liveness check that a
    # client's extra field could fail would report a live daemon as down.
    @registry.method("system.ping", summary="Liveness check; answers \"pong\" whatever the params.",
                     params={"type": "object"}, positional=(), result={"const": "pong"})
    def ping(call: Call) -> str:
        return "pong"

    @registry.method("system.whoami",
                     summary="The caller as other clients see it: its public client_ref (which session.delegate "
                             "names) and kind; never its id.",
                     result=object_schema({"client_ref": {"type": "string"}, "kind": {"type": ["string", "null"]}},
                                          ("client_ref", "kind")))
    def whoami(call: Call) -> dict:
        return call.caller.originator().public()

    @registry.method("system.version", summary="Package, wire-contract and Python versions, and the transport.",
                     result=VERSION_RESULT)
    def version(call: Call) -> dict:
        info = context.describe()
        return {key: info[key] for key in ("version", "api_version", "python", "transport")}

    @registry.method("system.status",
                     summary="What `cheetahclaws daemon status` shows: pid, address, uptime, counters.",
                     result={"type": "object", "required": ["pid", "uptime_s", "version"]})
    def status(call: Call) -> dict:
        return context.describe()

    @registry.method("system.shutdown", summary="Stop the daemon gracefully after answering.",
                     result={"const": "shutdown_initiated"})
    def shutdown(call: Call) -> str:
        context.request_shutdown()
        return "shutdown_initiated"

    @registry.method("system.rotate_token",
                     summary="Replace the TCP bearer token now; the old one is refused from the next request.",
                     result=object_schema({"rotated": {"type": "boolean"}}, ("rotated",)))
    def rotate_token(call: Call) -> dict:
        return {"rotated": context.rotate_token()}

    @registry.method("echo.ping",
                     summary="Echo the params back and publish a ping_received event (any object params).",
                     params={"type": "object"},
                     positional=(),
                     result=object_schema({"pong": {"const": True}, "ts": NUMBER, "server_uptime_s": NUMBER,
                                           "echo": {"type": "object"}},
                                          ("pong", "ts", "server_uptime_s", "echo")))
    def echo_ping(call: Call) -> dict:
        caller = call.caller
        context.bus.publish("ping_received", {"from_client": caller.client_ref, "params": call.params},
                            originator=caller.originator())
        return {"pong": True, "ts": time.time(), "server_uptime_s": context.uptime_s(), "echo": call.params}

    @registry.method("rpc.discover", summary="The OpenRPC document of every method this daemon serves.",
                     result={"type": "object", "required": ["openrpc", "info", "methods"]})
    def discover(call: Call) -> dict:
        return registry.openrpc("cc_daemon", __version__, {"x-api-version": API_VERSION})
