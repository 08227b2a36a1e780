"""One session: a supervised agent runtime that frontends drive with turns and watch as events.

Owns: a session's life along ``session_states.TRANSITIONS`` (``starting`` or, after a daemon
restart, ``resuming`` -> ``idle`` <-> ``busy`` <-> ``waiting_permission``; ``restarting``,
``parked``, ``failed`` or ``stopped`` after its runtime exits, as its supervisor's
``Decision`` says; ``stopped`` when closed; a parked one restarted), changed only by
``Session._set_state``; keeping itself in ``session_records`` and coming back from them; its turns (a bounded queue, the originator of each,
``message_id`` idempotency, cancel with escalation, a per-turn time limit); turning every
runtime message into a bus event carrying ``session_id`` and ``turn_id``; who approves for
an unattended session that delegates to a client kind (its runtime's permission requests
are routed by ``approvals.Approvals``); and the refusals a session's callers get, as domain
exceptions (``SessionRefused``) the method layer maps to error codes.

Must not: spawn or signal processes (its supervisor does, made by
``SessionServices.supervisor_factory``), answer a permission request (only an unattended
session's own policy does, as itself, through ``Approvals``), know about HTTP or JSON-RPC,
or know the other sessions (``sessions.SessionManager`` does). Lock order: a session's lock
may be held while calling the supervisor, the permission store or ``on_ended``; none of
those calls back into a session while holding a lock of its own.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .approvals import (APPROVE_ALLOW, APPROVE_DENY, INTERACTIVE, UNATTENDED, Approvals, PolicyIdentity,
                        delegates_to_kind)
from .events import BusClosed, EventBus, EventNotDurable, Originator
from .identity import Caller
from .lru import remember
from .permissions import PermissionRequest, PermissionStore
from .usage_ledger import DailyUsage
from .runtimes.protocol import MAX_LINE_BYTES, Oversized, ProtocolError, decode, encode
from .session_answerers import Answerers
from .session_messages import RuntimeMessages
from .session_refusals import BudgetExhausted, SessionNotAccepting, TurnQueueFull
from .session_budget import Budget
from .session_records import (SessionRecords, originator_from, originator_record, spec_record, turn_from,
                              turn_record)
from .storage import DataDir
from .session_states import (AFTER_EXIT, BUSY, ENDED_STATES, FAILED, IDLE, LIVE_STATES, PARKED, RESTARTING,  # noqa: F401
                             RESUMING, STARTING, STATES, STOPPED, TRANSITIONS, WAITING_PERMISSION)
from .supervisor import ExitInfo, Runner, SupervisionConfig, Verdict
from .timers import Scheduler, TimerHandle

log = logging.getLogger("cc_daemon.sessions")

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
    max_turns: int | None = None
    max_cost_usd: float | None = None
    max_wall_s: float | None = None
    #: ``worktrees.Worktree.record()`` of a session isolated in its own git worktree (``cwd`` is in it).
    worktree: dict[str, Any] | None = None

    @property
    def delegates_to_kind(self) -> bool:
        return delegates_to_kind(self.mode, self.approve_via)


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 8
    max_queued_turns: int = 16
    #: ``message_id``s remembered per session for idempotency.
    max_message_ids: int = 1024
    #: Ended sessions kept for ``session.get`` / ``session.list`` before being forgotten.
    max_ended_sessions: int = 100


@dataclass(frozen=True)
class SessionServices:
    """What a session uses of the daemon: the manager makes one for all its sessions, a test
    its own (with a fake ``supervisor_factory``: no processes)."""

    bus: EventBus
    permissions: PermissionStore
    scheduler: Scheduler
    data_dir: DataDir
    limits: SessionLimits
    supervision: SupervisionConfig
    policy: PolicyIdentity
    #: Called like ``Supervisor(...)``; a session's one way to get a runtime process.
    supervisor_factory: Callable[..., Runner]
    #: Told of a session that ended (parked, stopped, failed), with the session's lock held.
    on_ended: Callable[[Session], None]
    #: Where sessions are kept across daemon restarts.
    records: SessionRecords
    #: The per-day sums of what runtimes reported.
    usage: DailyUsage


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


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Session(RuntimeMessages, Answerers):
    """One session: its runtime's supervisor, its turns and its state. Thread-safe."""

    def __init__(self, services: SessionServices, session_id: str, spec: SessionSpec, owner: Originator,
                 argv: list[str]):
        self.services = services
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
        self._approvals = Approvals(session_id, spec.mode, spec.approve_via, services.permissions, services.policy)
        self._usage: dict[str, float] = {}
        self._resume_token: str | None = None
        #: Delegations (``session_answerers``): the delegator's client key -> its delegate, and who it is.
        self._delegations: dict[str, Originator] = {}
        self._delegators: dict[str, Originator] = {}
        self._closing = False
        self._ready_timer: TimerHandle | None = None
        #: Events the store refused while failing (disk full); told to watchers once it recovers.
        self._unrecorded: dict[str, Any] | None = None
        self._handlers = {"ready": self._on_ready, "text": self._on_text, "tool_start": self._on_tool_start,
                          "tool_end": self._on_tool_end, "permission_request": self._on_permission_request,
                          "permission_withdrawn": self._on_permission_withdrawn, "turn_done": self._on_turn_done,
                          "error": self._on_error, "log": self._on_log}
        self._argv = argv
        self._budget = Budget(spec.max_turns, spec.max_cost_usd, spec.max_wall_s)
        self._state_reason: str | None = None
        self.supervisor = self._new_supervisor()

    def _new_supervisor(self) -> Runner:
        """A supervisor with fresh backoff counters (at creation, and for ``restart``)."""
        services, spec = self.services, self.spec
        return services.supervisor_factory(
            name=self.session_id, argv=self._argv, cwd=spec.cwd, env=spec.env,
            stderr_log=services.data_dir.session_stderr(self.session_id), scheduler=services.scheduler,
            config=services.supervision, restart_policy=spec.restart, listener=self,
            greeting=self._init_message, goodbye=lambda reason: encode({"type": "stop", "reason": reason}))

    # -- frontends' actions -----------------------------------------------------------------
    def start(self, creator: Caller) -> None:
        spec = self.spec
        self._publish("session_created", {
            "session_id": self.session_id, "name": spec.name, "runtime": spec.runtime, "cwd": str(spec.cwd),
            "mode": spec.mode, "approve_via": spec.approve_via if spec.mode == UNATTENDED else None,
            "restart": spec.restart, "max_turn_s": spec.max_turn_s, "worktree": spec.worktree, "state": self.state},
            self.owner,
            acknowledged=True)
        if spec.mode == UNATTENDED and spec.approve_via == APPROVE_ALLOW:
            log.warning("session %s is unattended with approve_via=allow: EVERY permission request its "
                        "runtime makes will be approved with no human asked", self.session_id)
        self.claim_approver(creator, explicit=False)
        with self._lock:
            self._persist()
        self.supervisor.start()

    def resume(self, record: dict[str, Any]) -> None:
        """Bring the session back as its record left it when the daemon stopped or died.

        The turn that was running is reported ``interrupted`` and never run again; the queued
        ones run; a parked or failed session stays so. The runtime gets the resume token it
        last reported; without one it starts afresh, and ``session_resumed`` says which."""
        with self._lock:
            self.created_at = record["created_at"]
            self._turns_accepted = record["turns_accepted"]
            self._resume_token = record.get("resume_token")
            self.approver = originator_from(record.get("approver"))
            self._usage = dict(record.get("usage") or {})
            budget = record.get("budget") or {}
            self._budget.turns_started = budget.get("turns_started", 0)
            self._budget.wall_s_used = budget.get("wall_s_used", 0.0)
            self._budget.exhausted = budget.get("exhausted")
            self._restore_delegations(record.get("delegations") or [])
            for turn in map(turn_from, record["queue"]):
                self._queue.append(turn)
                remember(self._message_ids, turn.message_id, turn, self.services.limits.max_message_ids)
            if record.get("current"):
                self._finish_turn(turn_from(record["current"]), "interrupted",
                                  reason="the daemon stopped while this turn ran; it is not run again")
            ended = record["state"] in ENDED_STATES
            self.state = record["state"] if ended else RESUMING
            self._state_reason = record.get("state_reason") if ended else "resuming after a daemon restart"
            self._publish("session_resumed", {
                "state": self.state, "reason": self._state_reason, "queued": len(self._queue),
                "resume_token": self._resume_token is not None,
                "fresh": not ended and self._resume_token is None})
            self._persist()
            if ended:
                self.services.on_ended(self)
                return
        self.supervisor.start()

    def restart(self, caller: Caller) -> None:
        """Start a parked session's runtime again, with fresh backoff counters; why it was
        parked stays in its history (the ``session_state`` event that parked it)."""
        with self._lock:
            if self.state != PARKED or self._closing:
                raise SessionNotAccepting(f"Session {self.session_id} is {self.state}; only a parked session "
                                          "can be restarted", session_id=self.session_id, state=self.state)
            parked_because = self._state_reason
            self.supervisor = self._new_supervisor()
            self._set_state(STARTING, f"restarted by {caller.client_ref} (it was parked: {parked_because})")
        self.supervisor.start()

    def send(self, caller: Caller, text: str, message_id: str | None) -> Turn:
        """Queue a turn (or return the one ``message_id`` already started)."""
        with self._lock:
            if message_id is not None and message_id in self._message_ids:
                return self._message_ids[message_id]
            if self.state not in LIVE_STATES or self._closing:
                raise SessionNotAccepting(f"Session {self.session_id} is {self.state} and takes no turns",
                                          session_id=self.session_id, state=self.state)
            why_not = self._budget.refusal(len(self._queue) + (self._current is not None))
            if why_not is not None:
                raise BudgetExhausted(f"Session {self.session_id} takes no more turns: {why_not}",
                                      session_id=self.session_id, budget=self._budget.summary(self._usage.get("cost_usd")))
            limit = self.services.limits.max_queued_turns
            if len(self._queue) >= limit:
                raise TurnQueueFull(f"Session {self.session_id} already has {limit} turns queued",
                                    session_id=self.session_id, limit=limit)
            turn = Turn(new_id("turn"), message_id or new_id("msg"), text, caller.originator(), time.time())
            # Recorded first: a turn the log cannot hold is refused (-32003), never half-accepted.
            self._publish("turn_queued", {"turn_id": turn.turn_id, "message_id": turn.message_id, "text": text,
                                          "position": len(self._queue) + 1}, turn.originator, acknowledged=True)
            remember(self._message_ids, turn.message_id, turn, self.services.limits.max_message_ids)
            self._turns_accepted += 1
            self.claim_approver(caller, explicit=False)
            self._queue.append(turn)
            self._dispatch()
            self._persist()
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
            self._approvals.cancel(reason)
            self._set_state(STOPPED, reason)
            self._announce_closed(reason, by)

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
                "usage": dict(self._usage), "budget": self._budget.summary(self._usage.get("cost_usd")),
                "worktree": spec.worktree, "closed_reason": self.closed_reason}
            if detail:
                out.update({
                    "args": list(spec.args), "env_names": sorted(spec.env),
                    "queued_turns": [turn.summary() for turn in self._queue],
                    "approver": self.approver.public() if self.approver is not None else None,
                    "delegations": self._delegations_public(),
                    "pending_permissions": self._approvals.pending()})
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
            timeout = self.services.supervision.ready_timeout_s
            self._ready_timer = self.services.scheduler.call_later(timeout, lambda: self._ready_overdue(pid, timeout))

    def _ready_overdue(self, pid: int, timeout: float) -> None:
        with self._lock:
            if self.state not in (STARTING, RESUMING) or self.supervisor.snapshot().get("pid") != pid:
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
            self._approvals.abandon(f"runtime {exit.describe()}")
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
            response = self._approvals.response(request)
            if response is None:
                return
            self.supervisor.send(response)
            if not self._approvals.pending() and self.state == WAITING_PERMISSION:
                self._set_state(BUSY, f"permission request {request.state}")

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
            turn.timers.append(self.services.scheduler.call_later(self.spec.max_turn_s, lambda: self._time_out(turn)))
        wall_left = self._budget.start_turn()
        if wall_left is not None:
            turn.timers.append(self.services.scheduler.call_later(wall_left, lambda: self._wall_budget_reached(turn)))
        self.supervisor.send(encode({"type": "turn", "turn_id": turn.turn_id, "text": turn.text}))

    def _cancel_current(self, reason: str, by: str | None) -> None:
        turn = self._current
        if turn is None or turn.cancel_reason is not None:
            return
        turn.cancel_reason = reason
        self._publish("turn_cancel_requested", {"turn_id": turn.turn_id, "reason": reason, "by": by}, turn.originator)
        self.supervisor.send(encode({"type": "cancel", "turn_id": turn.turn_id, "reason": reason}))
        self._approvals.cancel("turn cancelled")
        grace = self.services.supervision.cancel_grace_s
        turn.timers.append(self.services.scheduler.call_later(grace, lambda: self._cancel_overdue(turn, grace)))

    def _time_out(self, turn: Turn) -> None:
        with self._lock:
            if self._current is turn:
                self._cancel_current(f"max_turn_s ({self.spec.max_turn_s:g} s) exceeded", by=None)

    def _wall_budget_reached(self, turn: Turn) -> None:
        with self._lock:
            if self._current is turn:
                self._cancel_current(f"the max_wall_s budget ({self.spec.max_wall_s:g} s) is used up", by=None)

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
            self.services.usage.add(usage)
        if reason:
            data["reason"] = reason
        self._publish("turn_done", data, turn.originator)
        self._approvals.cancel(f"turn {status}")
        if turn.started_at is not None:
            exhausted = self._budget.end_turn(time.time() - turn.started_at, self._usage.get("cost_usd", 0))
            if exhausted is not None:
                self._publish("budget_exhausted", {"limit": exhausted, "turn_id": turn.turn_id,
                                                   **self._budget.summary(self._usage.get("cost_usd"))})
                self._drop_queue(f"the session's {exhausted} budget is used up")
        self._persist()

    def _drop_queue(self, reason: str) -> None:
        while self._queue:
            self._finish_turn(self._queue.popleft(), "dropped", reason=reason)

    # -- state and events -------------------------------------------------------------------
    def _set_state(self, state: str, reason: str | None = None, **extra: Any) -> None:
        """The one way the state changes (the lock is held): only along ``TRANSITIONS``; a
        move that stays in its state announces nothing."""
        TRANSITIONS.check(self.state, state)
        if state == self.state:
            return
        previous, self.state, self._state_reason = self.state, state, reason
        self._publish("session_state", {"state": state, "previous": previous, "reason": reason, **extra})
        self._persist()
        if state in ENDED_STATES:
            self.services.on_ended(self)

    def _persist(self) -> None:
        """Keep the session as it is now (the lock is held); a stopped one is forgotten."""
        records = self.services.records
        if self.state == STOPPED:
            return records.forget(self.session_id)
        records.save(self.session_id, {
            "spec": spec_record(self.spec), "owner": originator_record(self.owner), "created_at": self.created_at,
            "state": self.state, "state_reason": self._state_reason, "resume_token": self._resume_token,
            "turns_accepted": self._turns_accepted, "approver": originator_record(self.approver),
            "usage": self._usage, "budget": self._budget.record(), "delegations": self._delegations_record(),
            "queue": [turn_record(turn) for turn in self._queue],
            "current": turn_record(self._current) if self._current is not None else None})

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
            self.services.bus.publish(type, data, session_id=self.session_id, originator=originator)
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
