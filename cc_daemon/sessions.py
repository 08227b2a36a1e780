"""Sessions: supervised agent runtimes that frontends drive with turns and watch as events.

Owns: the session model and its state machine (``starting`` -> ``idle`` <-> ``busy`` <->
``waiting_permission``; ``restarting`` after a crash; ``parked``, ``failed`` and ``stopped``
at the end); turns (a bounded queue, the originator of each, ``message_id`` idempotency,
cancel with escalation, a per-turn time limit); turning every runtime message into a bus
event carrying ``session_id`` and ``turn_id``; routing the runtime's permission requests
(interactive: the turn's originator answers; unattended: the session's ``approve_via``
policy); the limits (concurrent sessions, queued turns). ``SessionManager`` is the
service the ``session.*`` methods adapt.

Must not: spawn or signal processes (the supervisor does), answer a permission request
on a client's behalf (only an unattended session's own policy answers, as itself), or
know about HTTP. Lock order: a session's lock may be held while calling the supervisor,
the permission store or the manager; none of those calls back into a session while
holding a lock of its own.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (APPROVER_REFUSED, RUNTIME_UNAVAILABLE, SESSION_LIMIT, SESSION_NOT_ACCEPTING,
                     SESSION_NOT_FOUND, TURN_QUEUE_FULL)
from .events import BusClosed, EventBus, EventNotDurable, Originator
from .identity import Caller
from .lru import remember
from .permissions import PermissionRequest, PermissionStore
from .rpc import RpcError
from .runtimes.protocol import MAX_LINE_BYTES, Oversized, ProtocolError, decode, encode
from .runtimes.registry import RuntimeRegistry, RuntimeUnavailable
from .storage import DataDir, make_private_dir
from .supervisor import (FAILED, PARKED, RESTARTING, STOPPED, ExitInfo, SupervisionConfig, Supervisor, Verdict,
                         child_env)
from .timers import Scheduler, TimerHandle

log = logging.getLogger("cc_daemon.sessions")

# -- states ---------------------------------------------------------------------------------
STARTING, IDLE, BUSY, WAITING_PERMISSION = "starting", "idle", "busy", "waiting_permission"
# RESTARTING, PARKED, STOPPED and FAILED are the supervisor's: after an exit a session is in
# its supervisor's state, which ``Decision`` names (the one decision -> state mapping).
STATES = (STARTING, IDLE, BUSY, WAITING_PERMISSION, RESTARTING, PARKED, STOPPED, FAILED)
#: States that hold a slot of the concurrent-session limit (a process runs or will run).
LIVE_STATES = frozenset({STARTING, IDLE, BUSY, WAITING_PERMISSION, RESTARTING})
ENDED_STATES = frozenset({PARKED, STOPPED, FAILED})

INTERACTIVE, UNATTENDED = "interactive", "unattended"
#: ``approve_via`` values that are policies; any other value names a client kind.
APPROVE_DENY, APPROVE_ALLOW = "deny", "allow"

TURN_STATUSES = ("completed", "cancelled", "failed", "dropped")


@dataclass(frozen=True)
class SessionSpec:
    """What ``session.create`` asked for, validated."""

    runtime: str
    cwd: Path
    name: str | None = None
    mode: str = INTERACTIVE
    approve_via: str = APPROVE_DENY
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    restart: str = "on-crash"
    max_turn_s: float | None = None

    @property
    def delegates_to_kind(self) -> bool:
        return self.mode == UNATTENDED and self.approve_via not in (APPROVE_DENY, APPROVE_ALLOW)


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 8
    max_queued_turns: int = 16
    #: ``message_id``s remembered per session for idempotency.
    max_message_ids: int = 1024
    #: Ended sessions kept for ``session.get`` / ``session.list`` before being forgotten.
    max_ended_sessions: int = 100


@dataclass
class Turn:
    turn_id: str
    message_id: str
    text: str
    originator: Originator
    queued_at: float
    started_at: float | None = None
    cancel_reason: str | None = None
    timers: list[TimerHandle] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"turn_id": self.turn_id, "message_id": self.message_id, "originator": self.originator.public(),
                "queued_at": self.queued_at, "started_at": self.started_at,
                "cancel_requested": self.cancel_reason is not None}


@dataclass(frozen=True)
class PolicyIdentity:
    """Who an unattended session's policy answers as: a random key that no client can hold
    (client keys are keyed hashes of client ids), so nobody else can answer in its name."""

    client_key: str

    @property
    def originator(self) -> Originator:
        return Originator(self.client_key, "policy", "daemon")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Session:
    """One session: its runtime's supervisor, its turns and its state. Thread-safe."""

    def __init__(self, manager: SessionManager, session_id: str, spec: SessionSpec, owner: Originator,
                 argv: list[str]):
        self.manager = manager
        self.session_id = session_id
        self.spec = spec
        self.owner = owner
        self.created_at = time.time()
        self.state = STARTING
        self.approver: Originator | None = None
        self.runtime_version: str | None = None
        self.closed_reason: str | None = None
        self._lock = threading.RLock()
        self._queue: deque[Turn] = deque()
        self._current: Turn | None = None
        self._message_ids: OrderedDict[str, Turn] = OrderedDict()
        self._turns_accepted = 0
        #: Pending permission requests: store request id -> (runtime's request id, turn id).
        self._links: dict[str, tuple[str, str]] = {}
        self._usage: dict[str, float] = {}
        self._resume_token: str | None = None
        self._closing = False
        self._ready_timer: TimerHandle | None = None
        #: Events the store refused while failing (disk full); told to watchers once it recovers.
        self._unrecorded: dict[str, Any] | None = None
        self._handlers = {"ready": self._on_ready, "text": self._on_text, "tool_start": self._on_tool_start,
                          "tool_end": self._on_tool_end, "permission_request": self._on_permission_request,
                          "turn_done": self._on_turn_done, "error": self._on_error, "log": self._on_log}
        self.supervisor = Supervisor(
            name=session_id, argv=argv, cwd=spec.cwd, env=spec.env,
            stderr_log=manager.data_dir.session_stderr(session_id), scheduler=manager.scheduler,
            config=manager.supervision, restart_policy=spec.restart, listener=self,
            greeting=self._init_message, goodbye=lambda reason: encode({"type": "stop", "reason": reason}))

    # -- frontends' actions -----------------------------------------------------------------
    def start(self, creator: Caller) -> None:
        spec = self.spec
        self._publish("session_created", {
            "session_id": self.session_id, "name": spec.name, "runtime": spec.runtime, "cwd": str(spec.cwd),
            "mode": spec.mode, "approve_via": spec.approve_via if spec.mode == UNATTENDED else None,
            "restart": spec.restart, "max_turn_s": spec.max_turn_s, "state": self.state}, self.owner,
            acknowledged=True)
        if spec.mode == UNATTENDED and spec.approve_via == APPROVE_ALLOW:
            log.warning("session %s is unattended with approve_via=allow: EVERY permission request its "
                        "runtime makes will be approved with no human asked", self.session_id)
        self.claim_approver(creator, explicit=False)
        self.supervisor.start()

    def send(self, caller: Caller, text: str, message_id: str | None) -> Turn:
        """Queue a turn (or return the one ``message_id`` already started)."""
        with self._lock:
            if message_id is not None and message_id in self._message_ids:
                return self._message_ids[message_id]
            if self.state not in LIVE_STATES or self._closing:
                raise RpcError(SESSION_NOT_ACCEPTING, f"Session {self.session_id} is {self.state} and takes no turns",
                               {"session_id": self.session_id, "state": self.state})
            limit = self.manager.limits.max_queued_turns
            if len(self._queue) >= limit:
                raise RpcError(TURN_QUEUE_FULL, f"Session {self.session_id} already has {limit} turns queued",
                               {"session_id": self.session_id, "limit": limit})
            turn = Turn(new_id("turn"), message_id or new_id("msg"), text, caller.originator(), time.time())
            # Recorded first: a turn the log cannot hold is refused (-32003), never half-accepted.
            self._publish("turn_queued", {"turn_id": turn.turn_id, "message_id": turn.message_id, "text": text,
                                          "position": len(self._queue) + 1}, turn.originator, acknowledged=True)
            remember(self._message_ids, turn.message_id, turn, self.manager.limits.max_message_ids)
            self._turns_accepted += 1
            self.claim_approver(caller, explicit=False)
            self._queue.append(turn)
            self._dispatch()
            return turn

    def cancel(self, caller: Caller, turn_id: str | None) -> Turn | None:
        """Cancel the running turn, or the queued turn ``turn_id``; None when nothing matched."""
        with self._lock:
            queued = next((turn for turn in self._queue if turn.turn_id == turn_id), None)
            if queued is not None:
                self._queue.remove(queued)
                self._finish_turn(queued, "cancelled", reason=f"cancelled by {caller.client_ref} before it started")
                return queued
            turn = self._current
            if turn is None or (turn_id is not None and turn.turn_id != turn_id):
                return None
            self._cancel_current("cancelled by client", by=caller.client_ref)
            return turn

    def close(self, reason: str, by: str | None) -> None:
        """Stop the runtime (blocking, at most about ``kill_after_s``) and end the session."""
        with self._lock:
            if self.closed_reason is not None:
                return
            self._closing = True
            self._drop_queue(reason)
            if self._current is not None and self._current.cancel_reason is None:
                self._current.cancel_reason = reason
        self.supervisor.stop(reason)  # without our lock: its exit report needs it
        with self._lock:
            self._cancel_permissions(reason)
            self._set_state(STOPPED, reason)
            self._announce_closed(reason, by)

    def claim_approver(self, caller: Caller, *, explicit: bool) -> Originator | None:
        """Make ``caller`` the approver of an unattended session whose ``approve_via`` names
        its kind, if no other client holds that role. ``explicit`` (``session.claim_approver``)
        turns a refusal into an error; implicit claims (create, send) fail silently."""
        def refuse(message: str, **data: Any) -> None:
            if explicit:
                raise RpcError(APPROVER_REFUSED, message, {"session_id": self.session_id, **data})

        with self._lock:
            if not self.spec.delegates_to_kind:
                return refuse("This session does not delegate approval to a client kind",
                              mode=self.spec.mode, approve_via=self.spec.approve_via)
            if caller.kind != self.spec.approve_via:
                return refuse(f"Only a client of kind {self.spec.approve_via!r} may approve for this session",
                              expected_kind=self.spec.approve_via, kind=caller.kind)
            if self.approver is not None:
                if self.approver.is_held_by(caller):
                    return self.approver
                return refuse("Another client already approves for this session",
                              approver=self.approver.client_ref)
            self.approver = caller.originator()
            self._publish("approver_claimed", {"approver": self.approver.public()}, self.approver)
            return self.approver

    # -- queries ----------------------------------------------------------------------------
    def snapshot(self, detail: bool = False) -> dict[str, Any]:
        spec = self.spec
        with self._lock:
            out: dict[str, Any] = {
                "session_id": self.session_id, "name": spec.name, "runtime": spec.runtime,
                "runtime_version": self.runtime_version, "cwd": str(spec.cwd), "mode": spec.mode,
                "approve_via": spec.approve_via if spec.mode == UNATTENDED else None, "state": self.state,
                "owner": self.owner.public(), "created_at": self.created_at, "restart": spec.restart,
                "max_turn_s": spec.max_turn_s, "turns": self._turns_accepted, "queued": len(self._queue),
                "current_turn": self._current.summary() if self._current is not None else None,
                "usage": dict(self._usage), "closed_reason": self.closed_reason}
            if detail:
                out.update({
                    "args": list(spec.args), "env_names": sorted(spec.env),
                    "queued_turns": [turn.summary() for turn in self._queue],
                    "approver": self.approver.public() if self.approver is not None else None,
                    "pending_permissions": sorted(self._links)})
        if detail:
            out["runner"] = self.supervisor.snapshot()
            out["stderr_tail"] = self.supervisor.stderr.tail()
        return out

    # -- the runtime's side (RunnerListener) -----------------------------------------------
    def runner_event(self, type: str, data: dict) -> None:
        with self._lock:
            self._publish(type, data)

    def runner_started(self, pid: int) -> None:
        with self._lock:
            if self.state == RESTARTING:
                self._set_state(STARTING, f"runtime restarted as pid {pid}")
            self._disarm_ready_timer()
            timeout = self.manager.supervision.ready_timeout_s
            self._ready_timer = self.manager.scheduler.call_later(timeout, lambda: self._ready_overdue(pid, timeout))

    def _ready_overdue(self, pid: int, timeout: float) -> None:
        with self._lock:
            if self.state != STARTING or self.supervisor.snapshot().get("pid") != pid:
                return
            self._protocol_error("no_ready", f"no ready message within {timeout:g} s of starting pid {pid}; "
                                             "killing it", None)
        self.supervisor.kill(f"no ready within {timeout:g} s")

    def _disarm_ready_timer(self) -> None:
        if self._ready_timer is not None:
            self._ready_timer.cancel()
            self._ready_timer = None

    def runner_line(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            return self._protocol_error("oversized", f"a line of {line.length} bytes exceeds the "
                                                     f"{MAX_LINE_BYTES}-byte limit and was dropped", None)
        if not line.strip():
            return
        try:
            message = decode(line)
        except ProtocolError as exc:
            return self._protocol_error(exc.reason, exc.detail, line)
        with self._lock:
            self._handlers[message["type"]](message)

    def runner_exited(self, exit: ExitInfo, verdict: Verdict) -> None:
        with self._lock:
            self._disarm_ready_timer()
            # Forget the links first: the dead process must not be sent the denials.
            had_requests = bool(self._links)
            self._links.clear()
            if had_requests:
                self._permissions().cancel_for_session(self.session_id, f"runtime {exit.describe()}")
            turn = self._current
            if turn is not None:
                status = "cancelled" if turn.cancel_reason else "failed"
                self._finish_turn(turn, status, reason=turn.cancel_reason or f"runtime {exit.describe()}")
            state = verdict.action.state
            self._set_state(state, verdict.reason)
            if state in ENDED_STATES:
                self._drop_queue(f"the session is {state}")
            if state == STOPPED and not self._closing:
                self._announce_closed(verdict.reason, None)

    def permission_resolved(self, request: PermissionRequest) -> None:
        """Tell the runtime how its request ended (answered, timed out or cancelled)."""
        with self._lock:
            link = self._links.pop(request.request_id, None)
            if link is None:
                return
            runtime_request_id, turn_id = link
            answer = request.answer or {}
            self.supervisor.send(encode({
                "type": "permission_response", "turn_id": turn_id, "request_id": runtime_request_id,
                "approve": answer.get("approve") is True, "reason": str(answer.get("reason") or request.state)}))
            if not self._links and self.state == WAITING_PERMISSION:
                self._set_state(BUSY, f"permission request {request.state}")

    # -- runtime messages -------------------------------------------------------------------
    def _on_ready(self, message: dict) -> None:
        if self.state != STARTING:
            return self._protocol_error("unexpected", f"ready while {self.state}", None)
        self._disarm_ready_timer()
        self.runtime_version = message.get("version")
        self._set_state(IDLE, "runtime ready", runtime_version=self.runtime_version)
        self._dispatch()

    def _on_text(self, message: dict) -> None:
        if turn := self._turn_of(message):
            self._publish("text_chunk", {"turn_id": turn.turn_id, "text": message["text"]}, turn.originator)

    def _on_tool_start(self, message: dict) -> None:
        if turn := self._turn_of(message):
            self._publish("tool_start", {"turn_id": turn.turn_id, "tool_use_id": message["tool_use_id"],
                                         "tool": message["tool"], "input": message["input"]}, turn.originator)

    def _on_tool_end(self, message: dict) -> None:
        if turn := self._turn_of(message):
            self._publish("tool_end", {"turn_id": turn.turn_id, "tool_use_id": message["tool_use_id"],
                                       "ok": message["ok"], "output": message.get("output", "")}, turn.originator)

    def _on_permission_request(self, message: dict) -> None:
        turn = self._turn_of(message)
        if turn is None:
            return
        if any(link[0] == message["request_id"] for link in self._links.values()):
            return self._protocol_error("duplicate_request", f"request_id {message['request_id']} is pending", None)
        self._request_permission(turn, message)

    def _on_turn_done(self, message: dict) -> None:
        turn = self._turn_of(message)
        if turn is None:
            return
        if message.get("resume_token"):
            self._resume_token = message["resume_token"]
        self._finish_turn(turn, message["status"], usage=message.get("usage"), reason=turn.cancel_reason)
        self._set_state(IDLE, f"turn {message['status']}")
        self._dispatch()

    def _on_error(self, message: dict) -> None:
        turn = self._current if self._current and self._current.turn_id == message.get("turn_id") else None
        self._publish("runtime_error", {"turn_id": message.get("turn_id"), "message": message["message"]},
                      turn.originator if turn else None)

    def _on_log(self, message: dict) -> None:
        log.debug("session %s runtime log (%s): %s", self.session_id, message["level"], message["message"])
        self._publish("runtime_log", {"level": message["level"], "message": message["message"]})

    def _turn_of(self, message: dict) -> Turn | None:
        turn = self._current
        if turn is None or turn.turn_id != message["turn_id"]:
            self._protocol_error("unknown_turn", f"{message['type']} for turn {message['turn_id']}, but the "
                                                 f"running turn is {turn.turn_id if turn else 'none'}", None)
            return None
        return turn

    def _protocol_error(self, reason: str, detail: str, line: bytes | None) -> None:
        data: dict[str, Any] = {"reason": reason, "detail": detail}
        if line is not None:
            data.update(bytes=len(line), line_prefix=line[:200].decode("utf-8", "replace"))
        log.info("session %s: runtime protocol error %s: %s", self.session_id, reason, detail)
        with self._lock:
            self._publish("runtime_protocol_error", data)

    # -- permissions ------------------------------------------------------------------------
    def _request_permission(self, turn: Turn, message: dict) -> None:
        store, spec = self._permissions(), self.spec
        tool, tool_input, rationale = message["tool"], message["input"], message.get("rationale")
        asker = turn.originator if spec.mode == INTERACTIVE else self.approver
        if asker is not None:
            request = store.create(asker, tool, tool_input, rationale, mode=spec.mode,
                                   session_id=self.session_id, turn_id=turn.turn_id)
            self._links[request.request_id] = (message["request_id"], turn.turn_id)
            self._set_state(WAITING_PERMISSION, f"{tool} needs permission")
            return
        # Unattended and nobody to ask: the session's policy answers, as itself, on the record.
        approve = spec.approve_via == APPROVE_ALLOW
        reason = (f"approve_via={spec.approve_via}" if not spec.delegates_to_kind
                  else f"no client of kind {spec.approve_via!r} has claimed approval for this session")
        request = store.create(self.manager.policy.originator, tool, tool_input, rationale, mode=UNATTENDED,
                               session_id=self.session_id, turn_id=turn.turn_id)
        self._links[request.request_id] = (message["request_id"], turn.turn_id)
        if approve:
            log.warning("session %s: AUTO-APPROVED %s %s (approve_via=allow)", self.session_id, tool,
                        str(tool_input)[:200])
        store.answer(request.request_id, self.manager.policy, {"approve": approve, "reason": reason})

    def _cancel_permissions(self, reason: str) -> None:
        if self._links:
            self._permissions().cancel_for_session(self.session_id, reason)

    def _permissions(self) -> PermissionStore:
        return self.manager.permissions

    # -- turns ------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start the next queued turn if the runtime is ready for one."""
        if self.state != IDLE or self._current is not None or not self._queue:
            return
        turn = self._current = self._queue.popleft()
        turn.started_at = time.time()
        self._publish("turn_started", {"turn_id": turn.turn_id, "message_id": turn.message_id}, turn.originator)
        self._set_state(BUSY, f"turn {turn.turn_id} started")
        if self.spec.max_turn_s is not None:
            turn.timers.append(self.manager.scheduler.call_later(self.spec.max_turn_s, lambda: self._time_out(turn)))
        self.supervisor.send(encode({"type": "turn", "turn_id": turn.turn_id, "text": turn.text}))

    def _cancel_current(self, reason: str, by: str | None) -> None:
        turn = self._current
        if turn is None or turn.cancel_reason is not None:
            return
        turn.cancel_reason = reason
        self._publish("turn_cancel_requested", {"turn_id": turn.turn_id, "reason": reason, "by": by}, turn.originator)
        self.supervisor.send(encode({"type": "cancel", "turn_id": turn.turn_id, "reason": reason}))
        self._cancel_permissions("turn cancelled")
        grace = self.manager.supervision.cancel_grace_s
        turn.timers.append(self.manager.scheduler.call_later(grace, lambda: self._cancel_overdue(turn, grace)))

    def _time_out(self, turn: Turn) -> None:
        with self._lock:
            if self._current is turn:
                self._cancel_current(f"max_turn_s ({self.spec.max_turn_s:g} s) exceeded", by=None)

    def _cancel_overdue(self, turn: Turn, grace: float) -> None:
        with self._lock:
            if self._current is not turn:
                return
        self.supervisor.kill(f"turn {turn.turn_id} did not end within {grace:g} s of its cancel")

    def _finish_turn(self, turn: Turn, status: str, *, usage: dict | None = None, reason: str | None = None) -> None:
        for timer in turn.timers:
            timer.cancel()
        if self._current is turn:
            self._current = None
        data: dict[str, Any] = {"turn_id": turn.turn_id, "message_id": turn.message_id, "status": status}
        if usage:
            data["usage"] = usage
            for name, value in usage.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "duration_ms":
                    self._usage[name] = self._usage.get(name, 0) + value
        if reason:
            data["reason"] = reason
        self._publish("turn_done", data, turn.originator)
        if self._links:
            self._cancel_permissions(f"turn {status}")

    def _drop_queue(self, reason: str) -> None:
        while self._queue:
            self._finish_turn(self._queue.popleft(), "dropped", reason=reason)

    # -- state and events -------------------------------------------------------------------
    def _set_state(self, state: str, reason: str | None = None, **extra: Any) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        self._publish("session_state", {"state": state, "previous": previous, "reason": reason, **extra})
        if state in ENDED_STATES:
            self.manager.session_ended(self)

    def _announce_closed(self, reason: str, by: str | None) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self._publish("session_closed", {"reason": reason, "by": by})

    def _publish(self, type: str, data: dict[str, Any], originator: Originator | None = None, *,
                 acknowledged: bool = False) -> None:
        """Publish one of this session's events. ``acknowledged``: a frontend's call answers
        for it, so a store failure is that call's error. Anything else (runtime output, state
        changes) cannot be refused: what the store loses is counted and announced later."""
        try:
            self.manager.bus.publish(type, data, session_id=self.session_id, originator=originator)
        except BusClosed:
            log.warning("session %s: %s after the event bus closed; not recorded", self.session_id, type)
            return
        except EventNotDurable as exc:
            if acknowledged:
                raise
            self._count_unrecorded(type, str(exc))
            return
        if self._unrecorded is not None:
            self._announce_unrecorded()

    def _count_unrecorded(self, type: str, reason: str) -> None:
        with self._lock:
            if self._unrecorded is None:
                log.error("session %s: the event log refuses events (%s); counting what is lost until it "
                          "recovers", self.session_id, reason)
                self._unrecorded = {"count": 0, "types": {}, "reason": reason, "since": time.time()}
            self._unrecorded["count"] += 1
            self._unrecorded["types"][type] = self._unrecorded["types"].get(type, 0) + 1

    def _announce_unrecorded(self) -> None:
        with self._lock:
            lost, self._unrecorded = self._unrecorded, None
        if lost is None:
            return
        log.warning("session %s: %d event(s) were not recorded while the event log failed", self.session_id,
                    lost["count"])
        self._publish("events_unrecorded", {**lost, "until": time.time()})

    def _init_message(self) -> bytes:
        return encode({"type": "init", "protocol": 1, "session_id": self.session_id, "cwd": str(self.spec.cwd),
                       "mode": self.spec.mode, "args": list(self.spec.args), "resume_token": self._resume_token})


class SessionManager:
    """All sessions of a daemon. Thread-safe. Its lock is never held while calling a session."""

    def __init__(self, bus: EventBus, permissions: PermissionStore, scheduler: Scheduler, data_dir: DataDir,
                 runtimes: RuntimeRegistry, *, limits: SessionLimits | None = None,
                 supervision: SupervisionConfig | None = None):
        self.bus = bus
        self.permissions = permissions
        self.scheduler = scheduler
        self.data_dir = data_dir
        self.runtimes = runtimes
        self.limits = limits or SessionLimits()
        self.supervision = supervision or SupervisionConfig()
        self.policy = PolicyIdentity(secrets.token_hex(32))
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        make_private_dir(data_dir.sessions_dir)
        permissions.on_resolved(self._permission_resolved)

    def create(self, caller: Caller, spec: SessionSpec) -> Session:
        try:
            argv = self.runtimes.get(spec.runtime).launch(list(spec.args), spec.cwd, child_env(os.environ, spec.env))
        except RuntimeUnavailable as exc:
            raise RpcError(RUNTIME_UNAVAILABLE, str(exc), {"runtime": spec.runtime}) from None
        with self._lock:
            if self._closed:
                raise RpcError(SESSION_NOT_ACCEPTING, "The daemon is shutting down", {"state": "shutting_down"})
            live = sum(1 for session in self._sessions.values() if session.state in LIVE_STATES)
            if live >= self.limits.max_sessions:
                raise RpcError(SESSION_LIMIT, f"Too many sessions: {live} of {self.limits.max_sessions} are running; "
                                              "close one first", {"limit": self.limits.max_sessions})
            session = Session(self, new_id("ses"), spec, caller.originator(), argv)
            self._sessions[session.session_id] = session
        try:
            session.start(caller)
        except EventNotDurable:
            with self._lock:  # never announced, never started: as if it had not been asked for
                del self._sessions[session.session_id]
            raise
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise RpcError(SESSION_NOT_FOUND, f"Unknown session: {session_id}", {"session_id": session_id})
        return session

    def list(self) -> list[Session]:
        """Newest first."""
        with self._lock:
            return sorted(self._sessions.values(), key=lambda session: session.created_at, reverse=True)

    def counts(self) -> dict[str, int]:
        """Sessions per state, for the daemon's status."""
        counts = dict.fromkeys(STATES, 0)
        for session in self.list():
            counts[session.state] += 1
        return {state: count for state, count in counts.items() if count}

    def close_all(self, reason: str) -> None:
        """Stop every session at once (daemon shutdown); returns when all are stopped."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.values())
        closers = [threading.Thread(target=session.close, args=(reason, None), name=f"ccd-close-{session.session_id}")
                   for session in sessions if session.closed_reason is None]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()

    def session_ended(self, session: Session) -> None:
        """Keep at most ``max_ended_sessions`` ended sessions around; forget the oldest."""
        with self._lock:
            for oldest in remember(self._ended, session.session_id, None, self.limits.max_ended_sessions):
                if self._sessions.get(oldest) is not None and self._sessions[oldest].state in ENDED_STATES:
                    del self._sessions[oldest]

    def _permission_resolved(self, request: PermissionRequest) -> None:
        if request.session_id is None:
            return
        with self._lock:
            session = self._sessions.get(request.session_id)
        if session is not None:
            session.permission_resolved(request)
