"""Typed helpers over ``Client.call`` for the ``session.*`` and ``permission.*`` methods.

Owns: Python signatures for those methods (keyword arguments, defaults left to the daemon)
and a few conveniences built from calls and events (waiting for a turn's end).

Must not: hold state of its own or talk HTTP; every helper is one or more ``call``s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .connection import Client


def _params(**values: Any) -> dict[str, Any]:
    """Keyword params without the ones left at None (the daemon applies its defaults)."""
    return {name: value for name, value in values.items() if value is not None}


class Sessions:
    """``session.*``: create and drive agent sessions (``client.sessions``)."""

    def __init__(self, client: Client):
        self._client = client

    def create(self, runtime: str, cwd: str | os.PathLike[str], *, name: str | None = None,
               mode: str | None = None, approve_via: str | None = None, env: dict[str, str] | None = None,
               args: list[str] | None = None, restart: str | None = None,
               max_turn_s: float | None = None, max_turns: int | None = None, max_cost_usd: float | None = None,
               max_wall_s: float | None = None, isolation: str | None = None) -> dict[str, Any]:
        """Start a session of ``runtime`` (e.g. ``"demo"``) in ``cwd``; returns the session.

        ``mode``: ``"interactive"`` (default) or ``"unattended"`` (then ``approve_via``:
        ``deny``, ``allow`` or a client kind answers its permission requests). ``max_turns``,
        ``max_cost_usd``, ``max_wall_s``: a budget; past it sends raise ``BudgetExhausted``.
        ``isolation="worktree"``: run in a git worktree and branch of its own (the result's
        ``worktree`` names them)."""
        return self._client.call("session.create", **_params(
            runtime=runtime, cwd=os.fspath(Path(cwd).absolute()), name=name, mode=mode, approve_via=approve_via,
            env=env, args=args, restart=restart, max_turn_s=max_turn_s, max_turns=max_turns,
            max_cost_usd=max_cost_usd, max_wall_s=max_wall_s, isolation=isolation))

    def send(self, session_id: str, text: str, *, message_id: str | None = None) -> dict[str, Any]:
        """Start a turn (this client becomes its originator); returns ``{session_id, turn_id,
        message_id}`` at once, the output arrives as events. Resending the same
        ``message_id`` never starts a second turn."""
        return self._client.call("session.send", **_params(session_id=session_id, text=text,
                                                           message_id=message_id))

    def turn(self, session_id: str, text: str, *, message_id: str | None = None,
             read_timeout: float | None = 60.0) -> Iterator[dict[str, Any]]:
        """Send ``text`` and yield the session's events until this turn's ``turn_done``
        (which is yielded last). Nothing is missed: the stream starts before the send."""
        stream = self._client.events(self._client.last_event_id(), session=session_id,
                                     read_timeout=read_timeout)
        with stream:
            turn_id = self.send(session_id, text, message_id=message_id)["turn_id"]
            for event in stream:
                yield event
                if event["type"] == "turn_done" and event_turn_id(event) == turn_id:
                    return

    def cancel(self, session_id: str, turn_id: str | None = None) -> dict[str, Any]:
        """Cancel the session's running turn, or its queued turn ``turn_id`` (the session
        stays); returns ``{session_id, cancelled, turn_id}``."""
        return self._client.call("session.cancel", **_params(session_id=session_id, turn_id=turn_id))

    def close(self, session_id: str, *, delete_branch: bool | None = None,
              discard_changes: bool | None = None) -> Any:
        """Stop the session's runtime process; the session's history stays readable. A
        worktree session's worktree is removed (``discard_changes``: even with changes in
        it), its branch kept unless ``delete_branch``."""
        return self._client.call("session.close", **_params(session_id=session_id, delete_branch=delete_branch,
                                                            discard_changes=discard_changes))

    def delegate(self, session_id: str, to: str | None) -> dict[str, Any]:
        """Let the client whose ``client_ref`` is ``to`` answer the permission requests this
        client originates in the session (``None``: take that back); ``DelegationRefused``
        says why not. A client learns its own ref from ``system.whoami``."""
        return self._client.call("session.delegate", session_id=session_id, to=to)

    def restart(self, session_id: str) -> Any:
        """Start a parked session's runtime again (``SessionNotAccepting`` when it is not parked)."""
        return self._client.call("session.restart", session_id=session_id)

    def list(self) -> list[dict[str, Any]]:
        """Every session the daemon knows, newest first."""
        result = self._client.call("session.list")
        return result["sessions"] if isinstance(result, dict) else result

    def get(self, session_id: str) -> dict[str, Any]:
        """One session: state, runtime, cwd, timestamps, the tail of its runtime's stderr."""
        return self._client.call("session.get", session_id=session_id)

    def history(self, session_id: str, **filters: Any) -> dict[str, Any]:
        """The session's events from the durable log (``filters``: as ``session.history`` takes)."""
        return self._client.call("session.history", session_id=session_id, **filters)

    def iter_history(self, session_id: str, since: int = 0) -> Iterator[dict[str, Any]]:
        """Every stored event of the session after id ``since``, oldest first, paging
        through ``session.history`` until the log has no more."""
        cursor: int | None = since
        while cursor is not None:
            page = self.history(session_id, since=cursor, limit=1000)
            yield from page["events"]
            cursor = page["next_since"]

    def runtimes(self) -> Any:
        """The runtimes this daemon can start, with version and path where known."""
        return self._client.call("session.runtimes")


def event_turn_id(event: dict[str, Any]) -> str | None:
    """The turn an event belongs to, if it names one."""
    data = event.get("data")
    return data.get("turn_id") if isinstance(data, dict) else None


class Permissions:
    """``permission.*``: answer the permission requests this client originated
    (``client.permissions``)."""

    def __init__(self, client: Client):
        self._client = client

    def pending(self) -> list[dict[str, Any]]:
        """This client's own pending requests (others' are never listed)."""
        return self._client.call("permission.list")["pending"]

    def get(self, request_id: str) -> dict[str, Any]:
        """One of this client's requests, pending or resolved, with its ``state``."""
        return self._client.call("permission.get", request_id=request_id)

    def answer(self, request_id: str, approve: bool, *, reason: str | None = None,
               remember: bool | None = None) -> dict[str, Any]:
        """Approve or deny; raises ``NotOriginator`` when no request of this client has that id
        and ``UnknownRequest`` when it is already resolved."""
        result = _params(approve=approve, reason=reason, remember=remember)
        return self._client.call("permission.answer", request_id=request_id, result=result)

    def approve(self, request_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """``answer(request_id, True)``."""
        return self.answer(request_id, True, reason=reason)

    def deny(self, request_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """``answer(request_id, False)``."""
        return self.answer(request_id, False, reason=reason)

    def refresh_timeout(self, request_id: str, extend_s: float = 600) -> dict[str, Any]:
        """Push the request's deadline back by ``extend_s`` seconds (capped by the daemon)."""
        return self._client.call("permission.refresh_timeout", request_id=request_id, extend_s=extend_s)

    def demo(self, tool: str = "Bash", input: dict[str, Any] | None = None, *, rationale: str | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        """Create a request originated by this client, to try the flow end to end."""
        return self._client.call("permission.demo", **_params(tool=tool, input=input, rationale=rationale,
                                                              timeout_s=timeout_s))


