"""Sessions kept in ``daemon.db``, so that they outlive the daemon (RFC 0004 §9).

Owns: the record of one session (its definition, state and the reason for it, the turn
that was running, the queued turns with their originators, the runtime's resume token, the
approver, the usage and budget so far) in the ``sessions`` record table, written when any of these
changes (per turn and per state change, never per output chunk), and forgotten when the
session stops; and the daemon's stop, after which nothing is written any more, so that
the records say what was live and resumes at the next start.

The record holds the session's ``env`` values as given (a runtime cannot resume without
them); ``daemon.db`` is the owner's file in the owner's private data dir (RFC 0002 §1.1),
like the token. Client ids are never in it: originators are their keyed hashes.

Must not: start, stop or change sessions (``sessions.SessionManager.restore`` brings them
back); interpret what a runtime's resume token means.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .events import Originator
from .records import RecordsNotStored, RecordTable

if TYPE_CHECKING:
    from .session import SessionSpec, Turn

log = logging.getLogger("cc_daemon.sessions")


class SessionRecords:
    """The ``sessions`` table, written through; thread-safe (the table is)."""

    def __init__(self, table: RecordTable | None):
        self._table = table
        self._stopping = False

    def save(self, session_id: str, record: dict[str, Any]) -> None:
        if self._table is None or self._stopping:
            return
        try:
            self._table.write({session_id: record})
        except RecordsNotStored as exc:
            # The session goes on; at a restart it would come back as it was last stored.
            log.error("session %s could not be stored: %s", session_id, exc)

    def forget(self, session_id: str) -> None:
        if self._table is None or self._stopping:
            return
        try:
            self._table.write(deletes=[session_id])
        except RecordsNotStored as exc:
            log.error("session %s could not be removed from the store: %s", session_id, exc)

    def load(self) -> dict[str, dict[str, Any]]:
        return self._table.load() if self._table is not None else {}

    def daemon_stopping(self) -> None:
        """From now on nothing is written: the sessions the daemon stops are stopped by the
        daemon, not closed by anyone, and the records keep them as they were."""
        self._stopping = True


def spec_record(spec: SessionSpec) -> dict[str, Any]:
    return {"runtime": spec.runtime, "cwd": str(spec.cwd), "name": spec.name, "mode": spec.mode,
            "approve_via": spec.approve_via, "env": dict(spec.env), "args": list(spec.args),
            "restart": spec.restart, "max_turn_s": spec.max_turn_s, "max_turns": spec.max_turns,
            "max_cost_usd": spec.max_cost_usd, "max_wall_s": spec.max_wall_s, "worktree": spec.worktree}


def spec_from(record: dict[str, Any]) -> SessionSpec:
    from .session import SessionSpec  # the session module imports this one

    return SessionSpec(**{**record, "cwd": Path(record["cwd"]), "args": tuple(record["args"])})


def originator_record(originator: Originator | None) -> dict[str, Any] | None:
    if originator is None:
        return None
    return {"client_key": originator.client_key, "client_ref": originator.client_ref, "kind": originator.kind}


def originator_from(record: dict[str, Any] | None) -> Originator | None:
    return Originator(**record) if record is not None else None


def turn_record(turn: Turn) -> dict[str, Any]:
    return {"turn_id": turn.turn_id, "message_id": turn.message_id, "text": turn.text,
            "originator": originator_record(turn.originator), "queued_at": turn.queued_at,
            "started_at": turn.started_at}


def turn_from(record: dict[str, Any]) -> Turn:
    from .session import Turn

    return Turn(record["turn_id"], record["message_id"], record["text"], originator_from(record["originator"]),
                record["queued_at"], record["started_at"])
