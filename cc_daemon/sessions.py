"""Sessions: the service the ``session.*`` methods adapt.

Owns: every session of a daemon (``SessionManager``): creating one (launching its runtime's
command line, within the limit of concurrent live sessions), finding it by id, listing them,
forgetting the oldest ended ones, closing them all at shutdown, and routing each resolved
permission request to its session; and the refusals of those calls, as domain exceptions
(``session_refusals.SessionRefused``) that the method layer maps to error codes. One session, its
state machine and its turns are ``session.Session``. A session isolated in a git worktree
(``worktrees``) gets it before it starts, and loses it when it is closed or its runtime
ends it, never when the daemon stops (it resumes there).

Must not: know about HTTP or JSON-RPC, or reach into a session: it calls a session's
methods and reads its state. Its lock is never held while calling a session.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .events import BusClosed, EventBus, EventNotDurable
from .identity import Caller
from .lru import remember
from .permissions import PermissionRequest, PermissionStore
from .runtimes.registry import RuntimeRegistry, RuntimeUnavailable
from .session import (ENDED_STATES, LIVE_STATES, PARKED, STATES, STOPPED, PolicyIdentity, Session, SessionLimits,
                      SessionServices, SessionSpec, new_id)
from .session_refusals import SessionNotAccepting, SessionRefused
from .safe_paths import make_private_dir
from .session_records import SessionRecords, originator_from, spec_from
from .usage_ledger import DailyUsage
from .storage import DataDir
from .supervisor import Runner, SupervisionConfig, Supervisor, child_env
from .timers import Scheduler
from .worktrees import Worktree, Worktrees

log = logging.getLogger("cc_daemon.sessions")


class SessionNotFound(SessionRefused):
    """No session has this id (any more: ended sessions are forgotten, oldest first)."""


class SessionLimitReached(SessionRefused):
    """``max_sessions`` sessions are live already."""


class SessionRuntimeUnavailable(SessionRefused):
    """The runtime asked for cannot run (``runtimes.registry.RuntimeUnavailable`` says why)."""


class SessionManager:
    """All sessions of a daemon. Thread-safe. Its lock is never held while calling a session."""

    def __init__(self, bus: EventBus, permissions: PermissionStore, scheduler: Scheduler, data_dir: DataDir,
                 runtimes: RuntimeRegistry, *, limits: SessionLimits | None = None,
                 supervision: SupervisionConfig | None = None, supervisor_factory: Callable[..., Runner] = Supervisor,
                 records: SessionRecords | None = None, usage: DailyUsage | None = None,
                 worktrees: Worktrees | None = None):
        self.runtimes = runtimes
        self.worktrees = worktrees or Worktrees(data_dir.worktrees_dir)
        self.limits = limits or SessionLimits()
        self.services = SessionServices(
            bus, permissions, scheduler, data_dir, self.limits, supervision or SupervisionConfig(),
            PolicyIdentity(secrets.token_hex(32)), supervisor_factory, on_ended=self.session_ended,
            records=records or SessionRecords(None), usage=usage or DailyUsage(None))
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        #: Sessions ``close`` is closing (it releases their worktree as asked) and those released.
        self._closing: set[str] = set()
        self._released: set[str] = set()
        make_private_dir(data_dir.sessions_dir)
        permissions.on_resolved(self._permission_resolved)

    def create(self, caller: Caller, spec: SessionSpec, *, isolation: str = "none") -> Session:
        """Start a session; with ``isolation="worktree"`` in a worktree of its own, made first
        (``worktrees.WorktreeRefused`` when it cannot be) and removed again if the session
        does not start."""
        session_id = new_id("ses")
        worktree = self.worktrees.create(spec.cwd, session_id) if isolation == "worktree" else None
        if worktree is not None:
            spec = replace(spec, cwd=Path(worktree.cwd), worktree=worktree.record())
        try:
            return self._start(caller, session_id, spec)
        except BaseException:
            if worktree is not None:
                self.worktrees.remove(worktree, delete_branch=True, discard_changes=True)
            raise

    def _start(self, caller: Caller, session_id: str, spec: SessionSpec) -> Session:
        try:
            argv = self.runtimes.get(spec.runtime).launch(list(spec.args), spec.cwd, child_env(os.environ, spec.env))
        except RuntimeUnavailable as exc:
            raise SessionRuntimeUnavailable(str(exc), runtime=spec.runtime) from None
        with self._lock:
            if self._closed:
                raise SessionNotAccepting("The daemon is shutting down", state="shutting_down")
            live = self._live_count_locked()
            if live >= self.limits.max_sessions:
                raise SessionLimitReached(f"Too many sessions: {live} of {self.limits.max_sessions} are running; "
                                          "close one first", limit=self.limits.max_sessions)
            session = Session(self.services, session_id, spec, caller.originator(), argv)
            self._sessions[session.session_id] = session
        try:
            session.start(caller)
        except EventNotDurable:
            with self._lock:  # never announced, never started: as if it had not been asked for
                del self._sessions[session.session_id]
            raise
        return session

    def restore(self) -> None:
        """Bring back every session the records keep (the daemon restarted); see ``Session.resume``.
        One whose runtime can no longer run comes back parked, saying why."""
        for session_id, record in sorted(self.services.records.load().items(),
                                         key=lambda item: item[1]["created_at"]):
            spec = spec_from(record["spec"])
            try:
                argv = self.runtimes.get(spec.runtime).launch(list(spec.args), spec.cwd,
                                                              child_env(os.environ, spec.env))
            except RuntimeUnavailable as exc:
                argv = []
                record = {**record, "state": PARKED, "state_reason": f"cannot resume: {exc}", "current": None}
            session = Session(self.services, session_id, spec, originator_from(record["owner"]), argv)
            with self._lock:
                self._sessions[session_id] = session
            session.resume(record)

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"Unknown session: {session_id}", session_id=session_id)
        return session

    def list(self) -> list[Session]:
        """Newest first."""
        with self._lock:
            return sorted(self._sessions.values(), key=lambda session: session.created_at, reverse=True)

    def live_count(self) -> int:
        """Sessions holding a slot of ``max_sessions``: their runtime runs or will restart."""
        with self._lock:
            return self._live_count_locked()

    def _live_count_locked(self) -> int:
        return sum(1 for session in self._sessions.values() if session.state in LIVE_STATES)

    def counts(self) -> dict[str, int]:
        """Sessions per state, for the daemon's status."""
        counts = dict.fromkeys(STATES, 0)
        for session in self.list():
            counts[session.state] += 1
        return {state: count for state, count in counts.items() if count}

    def close(self, session: Session, caller: Caller, *, delete_branch: bool = False,
              discard_changes: bool = False) -> dict[str, Any] | None:
        """Close ``session`` for ``caller``; its worktree goes (kept when it holds changes,
        unless ``discard_changes``), its branch stays unless ``delete_branch``. Returns what
        became of the worktree (None: it has none, or it was released before)."""
        with self._lock:
            self._closing.add(session.session_id)
        try:
            session.close(f"closed by {caller.client_ref}", caller.client_ref)
        finally:
            with self._lock:
                self._closing.discard(session.session_id)
        return self._release_worktree(session, delete_branch=delete_branch, discard_changes=discard_changes)

    def close_all(self, reason: str) -> None:
        """Stop every session at once (daemon shutdown); returns when all are stopped."""
        self.services.records.daemon_stopping()  # stopped by the daemon: they resume at its next start
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
        """Keep at most ``max_ended_sessions`` ended sessions around; forget the oldest. A
        session whose runtime stopped it loses its worktree now (``close`` releases its own)."""
        with self._lock:
            for oldest in remember(self._ended, session.session_id, None, self.limits.max_ended_sessions):
                if self._sessions.get(oldest) is not None and self._sessions[oldest].state in ENDED_STATES:
                    del self._sessions[oldest]
                    self._released.discard(oldest)
            stopped_itself = not self._closed and session.session_id not in self._closing
        if session.state == STOPPED:
            self.services.permissions.forget_delegations(session.session_id)
            if stopped_itself:
                self._release_worktree(session)

    def _release_worktree(self, session: Session, **how: Any) -> dict[str, Any] | None:
        if session.spec.worktree is None or session.state != STOPPED:
            return None
        with self._lock:
            if session.session_id in self._released:
                return None
            self._released.add(session.session_id)
        outcome = self.worktrees.remove(Worktree.from_record(session.spec.worktree), **how)
        log.info("session %s: worktree %s", session.session_id, outcome)
        try:
            self.services.bus.publish("worktree_released", outcome, session_id=session.session_id)
        except (BusClosed, EventNotDurable) as exc:  # the log line above is the record then
            log.warning("session %s: worktree_released not recorded: %s", session.session_id, exc)
        return outcome

    def _permission_resolved(self, request: PermissionRequest) -> None:
        if request.session_id is None:
            return
        with self._lock:
            session = self._sessions.get(request.session_id)
        if session is not None:
            session.permission_resolved(request)
