"""What a session does with each message its runtime writes (RFC 0004 §4).

Owns: the handler of every runtime message type (``ready``, ``text``, ``tool_start``,
``tool_end``, ``permission_request``, ``permission_withdrawn``, ``turn_done``, ``error``,
``log``): the events they become and the state moves they cause. ``RuntimeMessages`` is a
part of ``session.Session`` (its only user), kept apart so that each file stays readable;
every handler runs with the session's lock held.

Must not: be used without ``Session``; decode lines (``Session.runner_line`` does) or spawn
anything.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .session_states import BUSY, IDLE, RESUMING, STARTING, WAITING_PERMISSION

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("cc_daemon.sessions")


class RuntimeMessages:
    """The runtime-message handlers of a ``Session``."""

    def _on_ready(self: Session, message: dict) -> None:
        if self.state not in (STARTING, RESUMING):
            return self._protocol_error("unexpected", f"ready while {self.state}", None)
        self._disarm_ready_timer()
        self.runtime_version = message.get("version")
        self._set_state(IDLE, "runtime ready", runtime_version=self.runtime_version)
        self._dispatch()

    def _on_text(self: Session, message: dict) -> None:
        if turn := self._turn_of(message):
            self._publish("text_chunk", {"turn_id": turn.turn_id, "text": message["text"]}, turn.originator)

    def _on_tool_start(self: Session, message: dict) -> None:
        if turn := self._turn_of(message):
            self._publish("tool_start", {"turn_id": turn.turn_id, "tool_use_id": message["tool_use_id"],
                                         "tool": message["tool"], "input": message["input"]}, turn.originator)

    def _on_tool_end(self: Session, message: dict) -> None:
        if turn := self._turn_of(message):
            self._publish("tool_end", {"turn_id": turn.turn_id, "tool_use_id": message["tool_use_id"],
                                       "ok": message["ok"], "output": message.get("output", "")}, turn.originator)

    def _on_permission_request(self: Session, message: dict) -> None:
        turn = self._turn_of(message)
        if turn is None:
            return
        if self._approvals.is_pending(message["request_id"]):
            return self._protocol_error("duplicate_request", f"request_id {message['request_id']} is pending", None)
        if self._approvals.ask(message, turn.turn_id, turn.originator, self.approver):
            self._set_state(WAITING_PERMISSION, f"{message['tool']} needs permission")

    def _on_permission_withdrawn(self: Session, message: dict) -> None:
        if self._turn_of(message) is None:
            return
        reason = message.get("reason") or "the runtime withdrew the question"
        if self._approvals.withdraw(message["request_id"], reason) and not self._approvals.pending() \
                and self.state == WAITING_PERMISSION:
            self._set_state(BUSY, "permission request withdrawn")

    def _on_turn_done(self: Session, message: dict) -> None:
        turn = self._turn_of(message)
        if turn is None:
            return
        if message.get("resume_token"):
            self._resume_token = message["resume_token"]
        self._finish_turn(turn, message["status"], usage=message.get("usage"), reason=turn.cancel_reason)
        self._set_state(IDLE, f"turn {message['status']}")
        self._dispatch()

    def _on_error(self: Session, message: dict) -> None:
        turn = self._current if self._current and self._current.turn_id == message.get("turn_id") else None
        self._publish("runtime_error", {"turn_id": message.get("turn_id"), "message": message["message"]},
                      turn.originator if turn else None)

    def _on_log(self: Session, message: dict) -> None:
        log.debug("session %s runtime log (%s): %s", self.session_id, message["level"], message["message"])
        self._publish("runtime_log", {"level": message["level"], "message": message["message"]})
