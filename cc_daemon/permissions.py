"""Permission requests (RFC 0001 §2): originator-only answers, timeouts, refresh.

Owns: the lifecycle of a permission request — created for an originator, answered or
refreshed only by that originator, auto-denied at its deadline by a timer — and the events
that announce each step. Resolved requests are remembered for a while (bounded) so that
a late answer gets "already resolved", and so that a non-originator cannot tell a
resolved request from a pending one.

A session's originator may delegate: the requests it originates in that session may then
be answered (refreshed, read) by one other client as well, its *delegate*, until the
delegation is taken back (``set_delegate``; the session decides who may delegate and
announces it). A request counts as the delegate's own for every check below.

Check order, chosen so a non-originator learns nothing, not even whether an id exists:
(1) is the id one of the caller's requests (``NotTheOriginator`` otherwise, for an unknown
id too), (2) is it still pending (``AlreadyResolved`` otherwise).

Must not: know about HTTP or JSON-RPC (it raises the domain refusals below, which the
method layer maps to the contract's codes), or how a runtime is told the answer (callers
register ``on_resolved``).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .events import EventBus, Originator
from .records import RecordsNotStored, RecordTable
from .refused import Refused
from .timers import Scheduler, TimerHandle

log = logging.getLogger("cc_daemon.permissions")

INTERACTIVE_TIMEOUT_S = 1800.0
UNATTENDED_TIMEOUT_S = 300.0
#: No refresh extends a request beyond this long after its creation.
MAX_LIFETIME_S = 24 * 3600.0

PENDING, ANSWERED, TIMED_OUT, CANCELLED = "pending", "answered", "timed_out", "cancelled"


class NotTheOriginator(Refused):
    """The id is not one of the caller's requests: another client's, or none at all."""


class AlreadyResolved(Refused):
    """The caller's request is answered, timed out or cancelled already."""


@dataclass
class PermissionRequest:
    request_id: str
    tool: str
    input: Any
    rationale: str | None
    originator: Originator
    created_at: float
    expires_at: float
    mode: str = "interactive"
    session_id: str | None = None
    turn_id: str | None = None
    state: str = PENDING
    answer: dict[str, Any] | None = None
    resolved_at: float | None = None
    timer: TimerHandle | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """The shape ``permission.list`` returns per request."""
        out = {"request_id": self.request_id, "tool": self.tool, "input": self.input,
               "rationale": self.rationale, "expires_at": self.expires_at}
        if self.session_id is not None:
            out["session_id"] = self.session_id
        return out

    def detail(self) -> dict[str, Any]:
        return {**self.summary(), "state": self.state, "mode": self.mode, "created_at": self.created_at,
                "answer": self.answer, "resolved_at": self.resolved_at, "turn_id": self.turn_id}

    def record(self) -> dict[str, Any]:
        """What survives a restart (the originator only as its keyed hash and public ref)."""
        return {"tool": self.tool, "input": self.input, "rationale": self.rationale,
                "client_key": self.originator.client_key, "client_ref": self.originator.client_ref,
                "kind": self.originator.kind, "created_at": self.created_at, "expires_at": self.expires_at,
                "mode": self.mode, "session_id": self.session_id, "turn_id": self.turn_id}

    @classmethod
    def from_record(cls, request_id: str, record: dict[str, Any]) -> PermissionRequest:
        originator = Originator(record["client_key"], record["client_ref"], record.get("kind"))
        return cls(request_id, record["tool"], record["input"], record.get("rationale"), originator,
                   record["created_at"], record["expires_at"], record.get("mode", "interactive"),
                   record.get("session_id"), record.get("turn_id"))


Resolution = Callable[[PermissionRequest], None]


class PermissionStore:
    def __init__(self, bus: EventBus, scheduler: Scheduler, *, table: RecordTable | None = None,
                 max_resolved: int = 10_000, max_lifetime_s: float = MAX_LIFETIME_S, clock=time.time,
                 monotonic=time.monotonic):
        self._bus = bus
        self._table = table
        #: Resolved requests whose record the store refused to delete; retried with each write.
        self._undeleted: set[str] = set()
        self._scheduler = scheduler
        self._max_resolved = max_resolved
        self._max_lifetime_s = max_lifetime_s
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._pending: dict[str, PermissionRequest] = {}
        self._resolved: OrderedDict[str, PermissionRequest] = OrderedDict()
        self._listeners: list[Resolution] = []
        #: (session id, delegator's client key) -> the delegate who may answer for it there.
        self._delegates: dict[tuple[str, str], Originator] = {}

    def on_resolved(self, listener: Resolution) -> None:
        """Call ``listener`` whenever a request is answered, times out or is cancelled."""
        self._listeners.append(listener)

    # -- creating ---------------------------------------------------------------------------
    def create(self, originator: Originator, tool: str, input: Any, rationale: str | None = None, *,
               timeout_s: float | None = None, mode: str = "interactive", session_id: str | None = None,
               turn_id: str | None = None) -> PermissionRequest:
        if timeout_s is None:
            timeout_s = UNATTENDED_TIMEOUT_S if mode == "unattended" else INTERACTIVE_TIMEOUT_S
        now = self._clock()
        request = PermissionRequest(
            request_id=f"pr_{secrets.token_hex(8)}", tool=tool, input=input, rationale=rationale,
            originator=originator, created_at=now, expires_at=now + min(timeout_s, self._max_lifetime_s),
            mode=mode, session_id=session_id, turn_id=turn_id)
        with self._lock:
            self._save(request)  # first: a request the store refused never exists (-32003)
            self._pending[request.request_id] = request
            self._arm(request)
            delegate = self._delegate_of(request)
        data = {**request.summary(), "mode": mode, "turn_id": turn_id}
        if delegate is not None:
            data["delegate"] = delegate.public()
        self._bus.publish("permission_request", data, session_id=session_id, originator=originator)
        return request

    # -- originator actions -----------------------------------------------------------------
    def answer(self, request_id: str, caller: Any, result: dict[str, Any]) -> PermissionRequest:
        with self._lock:
            request = self._pending_for(request_id, caller)
            self._resolve(request, ANSWERED, result)
        data = {"request_id": request_id, "answer": result, "resolved_at": request.resolved_at}
        if not request.originator.is_held_by(caller):
            data["answered_by"] = {"client_ref": caller.client_ref, "kind": caller.kind, "as": "delegate"}
        self._bus.publish("permission_answered", data, session_id=request.session_id, originator=request.originator)
        self._notify(request)
        return request

    def refresh(self, request_id: str, caller: Any, extend_s: float) -> PermissionRequest:
        with self._lock:
            request = self._pending_for(request_id, caller)
            cap = request.created_at + self._max_lifetime_s
            previous, request.expires_at = request.expires_at, min(request.expires_at + extend_s, cap)
            try:
                self._save(request)
            except RecordsNotStored:
                request.expires_at = previous  # refused: the old deadline stands, as the store says
                raise
            if request.timer is not None:
                request.timer.cancel()
            self._arm(request)
        self._bus.publish("permission_timeout_extended",
                          {"request_id": request_id, "expires_at": request.expires_at},
                          session_id=request.session_id, originator=request.originator)
        return request

    def get(self, request_id: str, caller: Any) -> PermissionRequest:
        with self._lock:
            return self._own(request_id, caller)

    def list_pending(self, caller: Any) -> list[PermissionRequest]:
        """``caller``'s own pending requests, and those delegated to it (``caller``: anything
        with ``client_key``)."""
        with self._lock:
            return sorted((r for r in self._pending.values() if self._may_act(r, caller)),
                          key=lambda r: r.created_at)

    def originator_keys(self) -> set[str]:
        """The client keys of everyone with a pending request, and of every delegate: the
        client registry keeps their ids however idle they are, so they can always come back
        to answer."""
        with self._lock:
            return ({request.originator.client_key for request in self._pending.values()}
                    | {delegate.client_key for delegate in self._delegates.values()})

    # -- delegation -------------------------------------------------------------------------
    def set_delegate(self, session_id: str, delegator_key: str, delegate: Originator | None) -> None:
        """From now on ``delegate`` may act on the requests ``delegator_key`` originates in
        session ``session_id`` (pending ones included); None takes that right back."""
        with self._lock:
            if delegate is None:
                self._delegates.pop((session_id, delegator_key), None)
            else:
                self._delegates[(session_id, delegator_key)] = delegate

    def pending_of(self, session_id: str, originator_key: str) -> list[str]:
        """The ids of the requests pending for one originator in one session."""
        with self._lock:
            return sorted(r.request_id for r in self._pending.values()
                          if r.session_id == session_id and r.originator.client_key == originator_key)

    def forget_delegations(self, session_id: str) -> None:
        """The session ended: its delegations go with it."""
        with self._lock:
            for key in [key for key in self._delegates if key[0] == session_id]:
                del self._delegates[key]

    def cancel(self, request_id: str, reason: str) -> None:
        """Resolve one pending request as cancelled (whoever asked no longer needs the answer)."""
        with self._lock:
            request = self._pending.get(request_id)
        if request is not None:
            self._cancel(request, reason)

    def cancel_for_session(self, session_id: str, reason: str) -> None:
        """Resolve a session's pending requests as denied (its turn or process is gone)."""
        with self._lock:
            doomed = [r for r in self._pending.values() if r.session_id == session_id]
        for request in doomed:
            self._cancel(request, reason)

    def _cancel(self, request: PermissionRequest, reason: str) -> None:
        with self._lock:
            if request.state != PENDING:
                return
            self._resolve(request, CANCELLED, {"approve": False, "reason": reason})
        self._bus.publish("permission_cancelled", {"request_id": request.request_id, "reason": reason},
                          session_id=request.session_id, originator=request.originator)
        self._notify(request)

    def restore(self) -> None:
        """Bring back the requests pending when the daemon last stopped.

        A request a session's runtime asked is resolved as denied: that process is gone, so
        no answer could reach it. Any other request is pending again with its old deadline
        (one that passed meanwhile expires at once, with the usual event).
        """
        if self._table is None:
            return
        orphaned = []
        with self._lock:
            for request_id, record in self._table.load().items():
                request = PermissionRequest.from_record(request_id, record)
                self._pending[request_id] = request
                if request.session_id is not None:
                    orphaned.append(request)
                else:
                    self._arm(request)
        for request in orphaned:
            self._cancel(request, "the daemon restarted; the runtime that asked is gone")

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        with self._lock:
            for request in self._pending.values():
                if request.timer is not None:
                    request.timer.cancel()

    # -- internals --------------------------------------------------------------------------
    def _own(self, request_id: str, caller: Any) -> PermissionRequest:
        """``caller``'s request ``request_id``, pending or recently resolved.

        Anything else is -32001, an id that does not exist included: answering those -32002
        would let a non-originator probe which ids exist. So the originator check comes
        first, and only the originator learns a request's state.
        """
        request = self._pending.get(request_id) or self._resolved.get(request_id)
        if request is None or not self._may_act(request, caller):
            raise NotTheOriginator("Only the originator of a permission request (or its delegate) may act on it",
                                   request_id=request_id)
        return request

    def _delegate_of(self, request: PermissionRequest) -> Originator | None:
        if request.session_id is None:
            return None
        return self._delegates.get((request.session_id, request.originator.client_key))

    def _may_act(self, request: PermissionRequest, caller: Any) -> bool:
        if request.originator.is_held_by(caller):
            return True
        delegate = self._delegate_of(request)
        return delegate is not None and delegate.is_held_by(caller)

    def _pending_for(self, request_id: str, caller: Any) -> PermissionRequest:
        request = self._own(request_id, caller)
        if request.state != PENDING:
            raise AlreadyResolved(f"Permission request {request_id} is already {request.state}",
                                  request_id=request_id, state=request.state)
        return request

    def _save(self, request: PermissionRequest) -> None:
        if self._table is not None:
            self._table.write({request.request_id: request.record()}, self._undeleted)
            self._undeleted.clear()

    def _forget_record(self, request_id: str) -> None:
        """Delete a resolved request's record. The resolution stands even when the store
        refuses: the delete is retried with the next write, and until then a restart would
        find the record and cancel it (its runtime is gone) or re-arm it."""
        if self._table is None:
            return
        self._undeleted.add(request_id)
        try:
            self._table.write(deletes=self._undeleted)
        except RecordsNotStored as exc:
            log.warning("permission request %s resolved, but its record is not deleted yet (%s)", request_id, exc)
            return
        self._undeleted.clear()

    def _arm(self, request: PermissionRequest) -> None:
        delay = request.expires_at - self._clock()
        request.timer = self._scheduler.call_at(self._monotonic() + max(0.0, delay),
                                                lambda: self._expire(request.request_id))

    def _expire(self, request_id: str) -> None:
        with self._lock:
            request = self._pending.get(request_id)
            if request is None or request.expires_at > self._clock() + 0.001:
                return  # answered meanwhile, or refreshed (a newer timer is armed)
            self._resolve(request, TIMED_OUT, {"approve": False, "reason": "timeout"})
        self._bus.publish("permission_timeout", {"request_id": request_id, "auto_answer": "deny"},
                          session_id=request.session_id, originator=request.originator)
        self._notify(request)

    def _resolve(self, request: PermissionRequest, state: str, answer: dict[str, Any]) -> None:
        if request.timer is not None:
            request.timer.cancel()
        request.state = state
        request.answer = answer
        request.resolved_at = self._clock()
        del self._pending[request.request_id]
        self._forget_record(request.request_id)
        self._resolved[request.request_id] = request
        while len(self._resolved) > self._max_resolved:
            self._resolved.popitem(last=False)

    def _notify(self, request: PermissionRequest) -> None:
        for listener in self._listeners:
            listener(request)
