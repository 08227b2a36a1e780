"""JSON-RPC methods: thin adapters from the wire to the services.

Owns: each method's name, params schema, result schema and documented errors, and the
translation between JSON params and service calls. One module per namespace.

Must not: hold state or implement policy; that lives in the services. Must not import the
transport: the caller arrives as ``Call.caller`` (an ``identity.Caller``).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping

from ..eventlog import SqliteEventStore
from ..events import EventBus, EventNotDurable
from ..identity import ClientRegistry
from ..permissions import PermissionStore
from ..errors import STORAGE_UNAVAILABLE
from ..rpc import Registry, RpcError
from ..sessions import SessionManager
from ..records import RecordsNotStored
from ..refused import Refused

log = logging.getLogger("cc_daemon.methods")


@dataclass
class MethodContext:
    """What the methods may use: services plus a few daemon controls."""

    bus: EventBus
    clients: ClientRegistry
    permissions: PermissionStore
    #: The durable event log, for history queries (publishing goes through ``bus``).
    event_log: SqliteEventStore
    #: A snapshot of the daemon's identity and counters for system.version / system.status.
    describe: Callable[[], dict]
    request_shutdown: Callable[[], None]
    rotate_token: Callable[[], bool]
    uptime_s: Callable[[], float]
    #: Agent sessions (``session.*``); None in a daemon composed without them.
    sessions: SessionManager | None = None


def build_registry(context: MethodContext) -> Registry:
    from . import events, permission, session, system, unserved

    registry = Registry()
    registry.why_not_served = unserved.why_not_served
    system.register(registry, context)
    permission.register(registry, context)
    events.register(registry, context)
    session.register(registry, context)
    registry.translate(EventNotDurable, storage_unavailable)
    registry.translate(RecordsNotStored, storage_unavailable)
    registry.translate(OSError, data_dir_unavailable)
    return registry


def translate_refusals(registry: Registry, codes: Mapping[type[Refused], int]) -> None:
    """Answer each service refusal in ``codes`` with its code, and its message and data as
    the service gave them."""
    for refusal, code in codes.items():
        registry.translate(refusal, partial(refused, code))


def refused(code: int, exc: Refused) -> RpcError:
    return RpcError(code, exc.message, exc.data)


#: What a full, read-only or failing data dir raises, as opposed to a bug.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def storage_unavailable(exc: Exception) -> RpcError:
    # Whatever the method did was not stored, so the call is not acknowledged: the client
    # must know to retry once the operator has fixed the store (/readyz says when).
    log.warning("storage unavailable: %s", exc)
    return RpcError(STORAGE_UNAVAILABLE, "Storage unavailable",
                    {"reason": str(exc), "retry": "when /readyz answers 200"})


def data_dir_unavailable(exc: Exception) -> RpcError | None:
    return storage_unavailable(exc) if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS else None
