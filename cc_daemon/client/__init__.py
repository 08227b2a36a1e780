"""The Python client of cc_daemon: find a daemon, call methods, follow events.

Owns, module by module (this file only gathers their public names):

    endpoint     where a daemon is: an explicit address, or a data dir's discovery file
    connection   ``Client``: headers, the client id, calls, notifications, batches
    stream       ``EventStream``: events that survive drops and restarts, and gaps
    namespaces   typed helpers for ``session.*`` and ``permission.*``
    exceptions   one exception per refusal and per error code the daemon answers with

Must not: import daemon internals; it speaks only the wire contract, like any frontend.

Example::

    from cc_daemon.client import Client
    with Client.connect(kind="script") as client:
        print(client.call("system.ping"))
        for event in client.events(since=0):
            print(event["id"], event["type"])
"""

from __future__ import annotations

from .connection import KIND_RE, Client
from .endpoint import Endpoint, discover
from .exceptions import (DaemonError, NotRunning, NoAnswer, ProtocolError, HttpStatusError, Unauthenticated, RateLimited,
                         VersionMismatch, RpcCallError, ParseError, InvalidRequest, MethodNotFound,
                         InvalidParams, InternalError, NotOriginator, UnknownRequest, StorageUnavailable,
                         ReplyTooLarge, SessionNotFound, SessionLimit, RuntimeUnavailable, TurnQueueFull,
                         SessionNotAccepting, ApproverRefused, BudgetExhausted, NotAGitRepository, WorktreeUnavailable,
                         GitMissing, DelegationRefused, EventGap, EventLogReset, rpc_error)
from .namespaces import Permissions, Sessions, event_turn_id
from .stream import EventStream

__all__ = [
    "KIND_RE", "Client", "Endpoint", "discover", "DaemonError", "NotRunning", "NoAnswer", "ProtocolError",
    "HttpStatusError", "Unauthenticated", "RateLimited", "VersionMismatch", "RpcCallError", "ParseError",
    "InvalidRequest", "MethodNotFound", "InvalidParams", "InternalError", "NotOriginator", "UnknownRequest",
    "StorageUnavailable", "ReplyTooLarge", "SessionNotFound", "SessionLimit", "RuntimeUnavailable", "TurnQueueFull",
    "SessionNotAccepting", "ApproverRefused", "BudgetExhausted", "NotAGitRepository", "WorktreeUnavailable",
    "GitMissing", "DelegationRefused", "EventGap", "EventLogReset", "rpc_error", "Permissions",
    "Sessions", "event_turn_id", "EventStream"
]
