"""A session in memory: a fake supervisor (no process), a fake scheduler (timers fire when
the test says), the real event bus and permission store. Drives ``Session`` through its
states and checks the events it publishes, the messages its runtime is sent, the refusals
its callers get, and that its transition table holds (the supervisor's: test_supervisor.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cc_daemon.approvals import PolicyIdentity
from cc_daemon.events import EventBus, MemoryEventStore
from cc_daemon.identity import Caller
from cc_daemon.methods.session import REFUSALS
from cc_daemon.permissions import PermissionStore
from cc_daemon.runtimes.registry import RuntimeRegistry
from cc_daemon.session_records import SessionRecords
from cc_daemon.usage_ledger import DailyUsage
from cc_daemon.session import (AFTER_EXIT, ENDED_STATES, LIVE_STATES, STATES, TRANSITIONS, Session, SessionLimits,
                               SessionServices, SessionSpec, Turn)
from cc_daemon.session_refusals import ApproverRefused, SessionNotAccepting, SessionRefused, TurnQueueFull
from cc_daemon.sessions import SessionLimitReached, SessionManager, SessionNotFound, SessionRuntimeUnavailable
from cc_daemon.storage import DataDir
from cc_daemon.supervisor import Decision, ExitInfo, SupervisionConfig, Verdict
from cc_daemon.timers import TimerHandle
from cc_daemon.transitions import IllegalTransition
from cc_daemon.worktrees import WorktreeRefused

CONFIG = SupervisionConfig(ready_timeout_s=30.0, cancel_grace_s=5.0)


class FakeScheduler:
    """Keeps the timers; ``fire`` runs the live ones armed with ``delay_s``."""

    def __init__(self):
        self.timers: list[tuple[float, TimerHandle]] = []

    def call_later(self, delay_s, callback):
        handle = TimerHandle(delay_s, callback)
        self.timers.append((delay_s, handle))
        return handle

    call_at = call_later  # the permission store's deadlines: never fired here

    def fire(self, delay_s: float) -> None:
        due = [handle for delay, handle in self.timers if delay == delay_s and not handle.cancelled]
        assert due, f"no live timer of {delay_s} s"
        for handle in due:
            handle.cancel()
            handle.callback()


class FakeStderr:
    def tail(self) -> list[str]:
        return []


class FakeSupervisor:
    """Stands in for ``Supervisor``: records what the session asks, and lets the test play
    the runtime (``started``, ``say``) and the restart policy (``exit``)."""

    def __init__(self, *, listener, greeting, **options):
        self.listener, self.greeting, self.options = listener, greeting, options
        self.stderr = FakeStderr()
        self.sent: list[dict] = []
        self.killed: list[str] = []
        self.stopped: list[str] = []
        self.pid: int | None = None

    # -- the Runner the session drives --------------------------------------------------------
    def start(self) -> None:
        self.started(100)

    def send(self, data: bytes) -> bool:
        self.sent.append(json.loads(data))
        return self.pid is not None

    def stop(self, reason: str) -> None:
        self.stopped.append(reason)
        if self.pid is not None:  # like the real one: a running process's exit is reported
            self.exit(Decision.STOP, "stopped on request", requested=True)

    def kill(self, reason: str) -> None:
        self.killed.append(reason)

    def snapshot(self) -> dict:
        return {"pid": self.pid}

    # -- the test's side ----------------------------------------------------------------------
    def started(self, pid: int) -> None:
        self.pid = pid
        self.sent.append(json.loads(self.greeting()))
        self.listener.runner_started(pid)

    def say(self, **message) -> None:
        self.listener.runner_line(json.dumps(message).encode())

    def exit(self, decision: Decision, reason: str = "killed by SIGKILL after 1.0 s", *, code: int | None = None,
             requested: bool = False) -> None:
        self.pid = None
        self.listener.runner_exited(ExitInfo(code, None if code is not None else 9, 1.0, requested),
                                    Verdict(decision, reason))

    def last(self, type: str) -> dict:
        return [message for message in self.sent if message["type"] == type][-1]


def caller(name: str, kind: str = "repl") -> Caller:
    return Caller(f"id-{name}", f"key-{name}", f"ref-{name}", kind, "test", "peer")


ALICE, BOB = caller("alice"), caller("bob")


class Rig:
    """A session with its fakes, and what it published."""

    def __init__(self, tmp_path: Path, spec: SessionSpec, limits: SessionLimits):
        self.store, self.scheduler, self.ended = MemoryEventStore(), FakeScheduler(), []
        bus = EventBus(self.store)
        self.permissions = PermissionStore(bus, self.scheduler)
        self.services = SessionServices(bus, self.permissions, self.scheduler, DataDir(tmp_path), limits, CONFIG,
                                        PolicyIdentity("policy-key"), FakeSupervisor, self.ended.append,
                                        SessionRecords(None), DailyUsage(None))
        self.session = Session(self.services, "ses_1", spec, ALICE.originator(), ["runtime"])
        # The manager's job, done here by hand: a resolved request goes back to its session.
        self.permissions.on_resolved(self.session.permission_resolved)
        self.runner: FakeSupervisor = self.session.supervisor  # type: ignore[assignment]
        self.seen = 0

    def events(self, *, new: bool = True) -> list[tuple[str, dict]]:
        """What the session published (since the last call, by default)."""
        events = self.store.read_after(self.seen if new else 0, 10_000)
        self.seen = self.store.last_id()
        return [(event.type, event.data) for event in events]

    def states(self) -> list[str]:
        return [data["state"] for type, data in self.events() if type == "session_state"]

    def ready(self) -> None:
        self.runner.say(type="ready", protocol=1, version="9.9")

    def busy(self, text: str = "hello") -> Turn:
        turn = self.session.send(ALICE, text, None)
        assert self.session.state == "busy" and self.runner.last("turn")["turn_id"] == turn.turn_id
        return turn


@pytest.fixture
def make(tmp_path):
    def make(limits: SessionLimits = SessionLimits(), **spec) -> Rig:
        rig = Rig(tmp_path, SessionSpec(runtime="demo", cwd=tmp_path, **spec), limits)
        rig.session.start(ALICE)
        return rig

    return make


@pytest.fixture
def rig(make) -> Rig:
    return make()


# -- the tables ---------------------------------------------------------------------------------
def test_the_session_table_lists_the_real_moves_and_nothing_else():
    assert STATES == ("starting", "resuming", "idle", "busy", "waiting_permission", "restarting", "parked", "stopped",
                      "failed")
    ends = {"restarting", "parked", "stopped", "failed"}
    assert AFTER_EXIT == ends == {decision.state for decision in Decision}
    allowed = {(state, new) for state in STATES for new in STATES if TRANSITIONS.allows(state, new)}
    assert allowed == {
        *(("starting", new) for new in {"idle", *ends}),
        *(("resuming", new) for new in {"idle", *ends}),
        *(("idle", new) for new in {"busy", *ends}),
        *(("busy", new) for new in {"idle", "waiting_permission", *ends}),
        *(("waiting_permission", new) for new in {"waiting_permission", "busy", "idle", *ends}),
        ("restarting", "starting"), ("restarting", "restarting"), ("restarting", "parked"),
        ("restarting", "stopped"), ("parked", "stopped"), ("parked", "starting"), ("stopped", "stopped"),
        ("failed", "stopped")}
    assert LIVE_STATES | ENDED_STATES == set(STATES) and not LIVE_STATES & ENDED_STATES
    for state, new in (("idle", "waiting_permission"), ("starting", "busy"), ("parked", "idle"),
                       ("stopped", "starting"), ("restarting", "failed"), ("idle", "idle")):
        with pytest.raises(IllegalTransition, match=f"session: {state} -> {new}"):
            TRANSITIONS.check(state, new)


def test_rfc_0004_lists_exactly_the_moves_of_the_table():
    text = (Path(__file__).parent.parent / "docs" / "RFC" / "0004-runtime-protocol.md").read_text()
    table = text.split("**Transitions.**", 1)[1].split("\n\n")[1]
    documented = set()
    for row in table.splitlines()[2:]:
        sources, targets = (re.findall(r"`([a-z_]+)`", cell) for cell in row.split("|")[1:3])
        documented |= {(source, target) for source in sources for target in targets}
    assert documented == {(state, new) for state in STATES for new in STATES if TRANSITIONS.allows(state, new)}


def test_an_ended_session_only_ever_stops_or_a_parked_one_is_restarted():
    for state in ENDED_STATES:
        restartable = {"starting"} if state == "parked" else set()
        assert {new for new in STATES if TRANSITIONS.allows(state, new)} == {"stopped", *restartable}


# -- a session's life -----------------------------------------------------------------------------
def test_ready_then_a_turn_runs_streams_and_ends(rig):
    assert rig.runner.sent == [{"type": "init", "protocol": 1, "session_id": "ses_1", "cwd": str(rig.session.spec.cwd),
                                "mode": "interactive", "args": [], "resume_token": None}]
    assert [type for type, _ in rig.events()] == ["session_created"]
    rig.ready()
    assert rig.session.state == "idle"
    assert rig.events() == [("session_state", {"state": "idle", "previous": "starting", "reason": "runtime ready",
                                               "runtime_version": "9.9"})]
    turn = rig.busy()
    assert rig.events() == [
        ("turn_queued", {"turn_id": turn.turn_id, "message_id": turn.message_id, "text": "hello", "position": 1}),
        ("turn_started", {"turn_id": turn.turn_id, "message_id": turn.message_id}),
        ("session_state", {"state": "busy", "previous": "idle", "reason": f"turn {turn.turn_id} started"})]
    rig.runner.say(type="text", turn_id=turn.turn_id, text="hi")
    rig.runner.say(type="turn_done", turn_id=turn.turn_id, status="completed", usage={"output_tokens": 2},
                   resume_token="r1")
    assert rig.events() == [
        ("text_chunk", {"turn_id": turn.turn_id, "text": "hi"}),
        ("turn_done", {"turn_id": turn.turn_id, "message_id": turn.message_id, "status": "completed",
                       "usage": {"output_tokens": 2}}),
        ("session_state", {"state": "idle", "previous": "busy", "reason": "turn completed"})]
    assert rig.session.snapshot()["usage"] == {"output_tokens": 2} and rig.session.snapshot()["turns"] == 1


def test_turns_sent_while_starting_wait_for_ready_and_run_one_at_a_time(rig):
    first, second = (rig.session.send(ALICE, text, None) for text in ("one", "two"))
    assert rig.session.state == "starting" and rig.session.snapshot()["queued"] == 2
    rig.ready()
    assert rig.session.state == "busy" and rig.runner.last("turn")["turn_id"] == first.turn_id
    rig.runner.say(type="turn_done", turn_id=first.turn_id, status="completed")
    assert rig.session.state == "busy" and rig.runner.last("turn")["turn_id"] == second.turn_id
    assert rig.states() == ["idle", "busy", "idle", "busy"]
    assert rig.session.send(ALICE, "again", first.message_id) is first  # message_id: no second turn


def test_a_permission_request_waits_for_its_originator_and_the_answer_reaches_the_runtime(rig):
    rig.ready()
    turn = rig.busy()
    rig.events()
    rig.runner.say(type="permission_request", turn_id=turn.turn_id, request_id="r1", tool="Write", input={"f": 1})
    assert rig.session.state == "waiting_permission"
    [request] = rig.permissions.list_pending(ALICE)
    assert request.turn_id == turn.turn_id and not rig.permissions.list_pending(BOB)
    assert rig.session.snapshot(detail=True)["pending_permissions"] == [request.request_id]
    rig.runner.say(type="permission_request", turn_id=turn.turn_id, request_id="r1", tool="Write", input={})
    assert [data["reason"] for type, data in rig.events() if type == "runtime_protocol_error"] == ["duplicate_request"]

    rig.permissions.answer(request.request_id, ALICE, {"approve": True})
    assert rig.runner.last("permission_response") == {"type": "permission_response", "turn_id": turn.turn_id,
                                                      "request_id": "r1", "approve": True, "reason": "answered"}
    assert rig.states() == ["busy"]
    rig.runner.say(type="turn_done", turn_id=turn.turn_id, status="completed")
    assert rig.states() == ["idle"]


def test_a_second_request_keeps_the_session_waiting_until_both_are_answered(rig):
    rig.ready()
    turn = rig.busy()
    for request_id in ("r1", "r2"):
        rig.runner.say(type="permission_request", turn_id=turn.turn_id, request_id=request_id, tool="Bash", input={})
    assert rig.states()[-1:] == ["waiting_permission"]  # staying: announced once
    first, second = rig.permissions.list_pending(ALICE)
    rig.permissions.answer(first.request_id, ALICE, {"approve": False, "reason": "no"})
    assert rig.session.state == "waiting_permission" and rig.runner.last("permission_response")["reason"] == "no"
    rig.permissions.answer(second.request_id, ALICE, {"approve": True})
    assert rig.session.state == "busy"


def test_a_turn_that_ends_while_waiting_cancels_its_requests(rig):
    rig.ready()
    turn = rig.busy()
    rig.runner.say(type="permission_request", turn_id=turn.turn_id, request_id="r1", tool="Bash", input={})
    rig.events()
    rig.runner.say(type="turn_done", turn_id=turn.turn_id, status="failed")
    events = rig.events()
    assert [type for type, _ in events] == ["turn_done", "permission_cancelled", "session_state", "session_state"]
    assert [data["reason"] for type, data in events if type == "session_state"] == [
        "permission request cancelled", "turn failed"]  # waiting -> busy -> idle
    assert rig.runner.last("permission_response")["approve"] is False
    assert rig.session.state == "idle" and rig.permissions.list_pending(ALICE) == []


@pytest.mark.parametrize("policy, approve", [("deny", False), ("allow", True)])
def test_an_unattended_policy_answers_at_once_as_itself(make, policy, approve):
    rig = make(mode="unattended", approve_via=policy)
    rig.ready()
    turn = rig.busy()
    rig.runner.say(type="permission_request", turn_id=turn.turn_id, request_id="r1", tool="Bash", input={})
    assert rig.session.state == "busy" and "waiting_permission" not in rig.states()
    assert rig.runner.last("permission_response") == {"type": "permission_response", "turn_id": turn.turn_id,
                                                      "request_id": "r1", "approve": approve,
                                                      "reason": f"approve_via={policy}"}


def test_a_delegated_session_asks_the_client_that_claimed_approval(make):
    rig = make(mode="unattended", approve_via="bridge")
    bridge = caller("bridge", kind="bridge")
    with pytest.raises(ApproverRefused) as wrong_kind:
        rig.session.claim_approver(BOB, explicit=True)
    assert (wrong_kind.value.message, wrong_kind.value.data) == (
        "Only a client of kind 'bridge' may approve for this session",
        {"session_id": "ses_1", "expected_kind": "bridge", "kind": "repl"})
    assert rig.session.claim_approver(bridge, explicit=True) == bridge.originator()
    with pytest.raises(ApproverRefused) as taken:
        rig.session.claim_approver(caller("other", kind="bridge"), explicit=True)
    assert taken.value.data == {"session_id": "ses_1", "approver": "ref-bridge"}
    rig.ready()
    turn = rig.busy()
    rig.runner.say(type="permission_request", turn_id=turn.turn_id, request_id="r1", tool="Bash", input={})
    assert rig.session.state == "waiting_permission" and len(rig.permissions.list_pending(bridge)) == 1


def test_claiming_approval_of_a_session_that_does_not_delegate_is_refused(rig):
    assert rig.session.claim_approver(BOB, explicit=False) is None  # implicit claims fail silently
    with pytest.raises(ApproverRefused) as refused:
        rig.session.claim_approver(BOB, explicit=True)
    assert refused.value.data == {"session_id": "ses_1", "mode": "interactive", "approve_via": "deny"}


# -- cancel and timers ------------------------------------------------------------------------
def test_cancel_asks_the_runtime_then_kills_it_after_the_grace(rig):
    rig.ready()
    turn = rig.busy()
    queued = rig.session.send(ALICE, "later", None)
    assert rig.session.cancel(BOB, queued.turn_id) is queued
    assert rig.session.cancel(BOB, None) is turn
    assert rig.runner.last("cancel") == {"type": "cancel", "turn_id": turn.turn_id, "reason": "cancelled by client"}
    done = [data for type, data in rig.events() if type == "turn_done"]
    assert done[0]["status"] == "cancelled" and "before it started" in done[0]["reason"]
    rig.scheduler.fire(CONFIG.cancel_grace_s)
    assert rig.runner.killed == [f"turn {turn.turn_id} did not end within 5 s of its cancel"]
    rig.runner.exit(Decision.RESTART)
    assert [data for type, data in rig.events() if type == "turn_done"][0]["status"] == "cancelled"


def test_max_turn_s_cancels_a_turn_that_runs_too_long(make):
    rig = make(max_turn_s=2.0)
    rig.ready()
    rig.busy()
    rig.scheduler.fire(2.0)
    assert rig.runner.last("cancel")["reason"] == "max_turn_s (2 s) exceeded"


def test_a_runtime_that_never_says_ready_is_killed(rig):
    rig.scheduler.fire(CONFIG.ready_timeout_s)
    assert rig.runner.killed == ["no ready within 30 s"]
    assert [data["reason"] for type, data in rig.events() if type == "runtime_protocol_error"] == ["no_ready"]


# -- exits ------------------------------------------------------------------------------------
def test_a_crash_mid_turn_fails_the_turn_and_the_restart_runs_the_queue(rig):
    rig.ready()
    turn = rig.busy()
    queued = rig.session.send(ALICE, "next", None)
    rig.runner.say(type="permission_request", turn_id=turn.turn_id, request_id="r1", tool="Bash", input={})
    responses = len([m for m in rig.runner.sent if m["type"] == "permission_response"])
    rig.events()
    rig.runner.exit(Decision.RESTART)
    assert [type for type, _ in rig.events()] == ["permission_cancelled", "turn_done", "session_state"]
    # The dead process is not sent the denial of its request.
    assert len([m for m in rig.runner.sent if m["type"] == "permission_response"]) == responses
    assert rig.session.state == "restarting" and rig.session.snapshot()["queued"] == 1
    rig.runner.started(101)
    assert rig.session.state == "starting"
    rig.ready()
    assert rig.session.state == "busy" and rig.runner.last("turn")["turn_id"] == queued.turn_id
    assert rig.states() == ["starting", "idle", "busy"]


@pytest.mark.parametrize("decision", [Decision.PARK, Decision.FAIL])
def test_a_runtime_that_parks_or_fails_ends_the_session(rig, decision):
    rig.ready()
    rig.busy()
    queued = rig.session.send(ALICE, "never", None)
    rig.runner.exit(decision, "it gave up")
    assert rig.session.state == decision.state and rig.ended == [rig.session]
    dropped = [data for type, data in rig.events() if type == "turn_done" and data["turn_id"] == queued.turn_id]
    assert dropped[0]["status"] == "dropped" and dropped[0]["reason"] == f"the session is {decision.state}"
    with pytest.raises(SessionNotAccepting) as refused:
        rig.session.send(ALICE, "hello?", None)
    assert (refused.value.message, refused.value.data) == (
        f"Session ses_1 is {decision.state} and takes no turns", {"session_id": "ses_1", "state": decision.state})
    rig.session.close("closed by ref-alice", "ref-alice")
    assert rig.states() == ["stopped"] and rig.session.state == "stopped"


def test_a_runtime_that_exits_with_0_closes_the_session(rig):
    rig.ready()
    rig.runner.exit(Decision.STOP, "the runtime exited on its own (exited with code 0 after 1.0 s)", code=0)
    assert rig.events()[-2:] == [
        ("session_state", {"state": "stopped", "previous": "idle",
                           "reason": "the runtime exited on its own (exited with code 0 after 1.0 s)"}),
        ("session_closed", {"reason": "the runtime exited on its own (exited with code 0 after 1.0 s)", "by": None})]
    rig.session.close("closed by ref-alice", "ref-alice")  # staying stopped; nothing more is said
    assert rig.events() == []


def test_close_stops_the_runtime_and_drops_the_queue(rig):
    rig.ready()
    turn = rig.busy()
    rig.session.send(ALICE, "queued", None)
    rig.events()
    rig.session.close("closed by ref-bob", "ref-bob")
    assert rig.session.snapshot()["current_turn"] is None and rig.runner.last("turn")["turn_id"] == turn.turn_id
    assert rig.runner.stopped == ["closed by ref-bob"]
    events = rig.events()
    assert [type for type, _ in events] == ["turn_done", "turn_done", "session_state", "session_closed"]
    assert [data["status"] for type, data in events if type == "turn_done"] == ["dropped", "cancelled"]
    assert events[-1][1] == {"reason": "closed by ref-bob", "by": "ref-bob"}
    assert rig.session.state == "stopped" and rig.ended == [rig.session]
    rig.session.close("again", None)
    assert rig.events() == []


def test_a_move_the_table_does_not_list_is_refused_and_announces_nothing(rig):
    rig.ready()
    rig.runner.exit(Decision.PARK, "parked")
    rig.events()
    # A supervisor bug: an exit reported after parking (no process runs). The session refuses
    # the move loudly and stays parked; nothing is published about it.
    with pytest.raises(IllegalTransition, match="session: parked -> restarting"):
        rig.runner.exit(Decision.RESTART)
    assert rig.session.state == "parked"
    assert [type for type, _ in rig.events()] == []


def test_a_ready_in_any_state_but_starting_is_a_protocol_error_not_a_move(rig):
    rig.ready()
    rig.events()
    rig.runner.say(type="ready", protocol=1)
    assert rig.events() == [("runtime_protocol_error", {"reason": "unexpected", "detail": "ready while idle"})]


# -- refusals and their codes -------------------------------------------------------------------
def test_a_full_queue_refuses_with_the_limit(make):
    rig = make(SessionLimits(max_queued_turns=1))
    rig.session.send(ALICE, "one", None)
    with pytest.raises(TurnQueueFull) as full:
        rig.session.send(ALICE, "two", None)
    assert (full.value.message, full.value.data) == ("Session ses_1 already has 1 turns queued",
                                                     {"session_id": "ses_1", "limit": 1})


def test_the_manager_refuses_with_what_the_wire_error_carries(tmp_path):
    scheduler = FakeScheduler()
    bus = EventBus(MemoryEventStore())
    manager = SessionManager(bus, PermissionStore(bus, scheduler), scheduler, DataDir(tmp_path), RuntimeRegistry(),
                             limits=SessionLimits(max_sessions=1), supervisor_factory=FakeSupervisor)
    spec = SessionSpec(runtime="demo", cwd=tmp_path)
    session = manager.create(ALICE, spec)
    assert manager.get(session.session_id) is session and session.supervisor.options["argv"]
    with pytest.raises(SessionLimitReached) as limit:
        manager.create(ALICE, spec)
    assert limit.value.data == {"limit": 1} and "1 of 1 are running" in limit.value.message
    with pytest.raises(SessionNotFound) as missing:
        manager.get("ses_x")
    assert (missing.value.message, missing.value.data) == ("Unknown session: ses_x", {"session_id": "ses_x"})
    with pytest.raises(SessionRuntimeUnavailable) as unknown:
        manager.create(ALICE, SessionSpec(runtime="nope", cwd=tmp_path))
    assert unknown.value.data == {"runtime": "nope"} and "unknown runtime 'nope'" in unknown.value.message
    manager.close_all("daemon shutdown")
    assert session.state == "stopped" and manager.counts() == {"stopped": 1}
    with pytest.raises(SessionNotAccepting) as closed:
        manager.create(ALICE, spec)
    assert closed.value.data == {"state": "shutting_down"}


def test_every_refusal_has_its_error_code():
    def subclasses(cls):
        return {cls, *(sub for direct in cls.__subclasses__() for sub in subclasses(direct))}

    # A worktree is made for the manager before any session exists: its refusals are its own.
    refusals = subclasses(SessionRefused) | subclasses(WorktreeRefused)
    assert set(REFUSALS) == refusals - {SessionRefused, WorktreeRefused}
    assert len(set(REFUSALS.values())) == len(REFUSALS)
