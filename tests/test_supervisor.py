"""Supervision: the restart policy as a pure state machine, then real runtimes crashing,
being killed, parking and refusing to stop, over HTTP with real daemons."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cc_daemon.client import RpcCallError
from cc_daemon.errors import SESSION_NOT_ACCEPTING
from cc_daemon import supervisor
from cc_daemon.supervisor import Decision, ExitInfo, RestartTracker, SupervisionConfig, Supervisor, child_env
from cc_daemon.timers import Scheduler
from cc_daemon.transitions import IllegalTransition

from helpers.daemons import wait_for
from helpers.frontend import ENTRYPOINT_DIR, Watcher, client_of, is_alive, wait_state

FAILED, PARK, RESTART, STOPPED = Decision.FAIL, Decision.PARK, Decision.RESTART, Decision.STOP

FAST = SupervisionConfig(backoff_base_s=0.05, backoff_max_s=0.2, stop_grace_s=0.5, kill_after_s=1.0,
                         cancel_grace_s=1.0)


def crash(ran_s: float, code: int | None = 1, sig: int | None = None) -> ExitInfo:
    return ExitInfo(code, sig, ran_s, requested=False)


# -- the policy, without processes ----------------------------------------------------------
def test_production_defaults_are_the_documented_ones():
    config = SupervisionConfig()
    assert (config.backoff_base_s, config.backoff_max_s, config.rapid_window_s, config.max_rapid_failures,
            config.stop_grace_s, config.kill_after_s) == (2.0, 120.0, 10.0, 5, 2.0, 5.0)


def test_rapid_crashes_back_off_exponentially_then_park_at_the_fifth():
    tracker = RestartTracker(SupervisionConfig(), "on-crash")
    verdicts = [tracker.judge(crash(1.0)) for _ in range(5)]
    assert [v.action for v in verdicts] == [RESTART] * 4 + [PARK]
    assert [v.delay_s for v in verdicts[:4]] == [2.0, 4.0, 8.0, 16.0]
    assert verdicts[-1].rapid_failures == 5 and "5 rapid failures" in verdicts[-1].reason


def test_slow_crashes_never_park_and_the_backoff_is_capped():
    tracker = RestartTracker(SupervisionConfig(), "on-crash")
    delays = [tracker.judge(crash(30.0, None, signal.SIGKILL)).delay_s for _ in range(10)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 120.0, 120.0, 120.0, 120.0]


def test_a_long_enough_run_resets_the_backoff_and_the_rapid_count():
    tracker = RestartTracker(SupervisionConfig(), "on-crash")
    for _ in range(4):
        tracker.judge(crash(1.0))
    verdict = tracker.judge(crash(61.0))
    assert (verdict.action, verdict.delay_s, verdict.rapid_failures) == (RESTART, 2.0, 0)


@pytest.mark.parametrize("exit, policy, action", [
    (crash(500.0, 78), "on-crash", PARK), (crash(0.1, 78), "none", PARK), (crash(3.0, 1), "none", FAILED),
    (crash(3.0, 0), "on-crash", STOPPED), (ExitInfo(None, signal.SIGTERM, 1.0, requested=True), "on-crash", STOPPED),
])
def test_exit_78_parks_clean_exits_stop_and_policy_none_fails(exit, policy, action):
    assert RestartTracker(SupervisionConfig(), policy).judge(exit).action == action


@given(st.lists(st.tuples(st.floats(0, 200), st.sampled_from([1, 2, None])), max_size=40))
def test_the_policy_holds_for_any_history_of_crashes(history):
    config = SupervisionConfig()
    tracker = RestartTracker(config, "on-crash")
    rapid_in_a_row = 0
    previous_delay = None
    for ran_s, code in history:
        verdict = tracker.judge(crash(ran_s, code, None if code else signal.SIGKILL))
        rapid_in_a_row = rapid_in_a_row + 1 if ran_s < config.rapid_window_s else 0
        if rapid_in_a_row >= config.max_rapid_failures:
            assert verdict.action == PARK
            return
        assert verdict.action == RESTART
        assert config.backoff_base_s <= verdict.delay_s <= config.backoff_max_s
        if ran_s >= config.stable_after_s:
            assert verdict.delay_s == config.backoff_base_s
        elif previous_delay is not None:
            assert verdict.delay_s == min(previous_delay * 2, config.backoff_max_s)
        previous_delay = verdict.delay_s


def test_children_never_inherit_the_service_managers_variables():
    env = child_env({"NOTIFY_SOCKET": "@x", "LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a",
                     "HOME": "/h"}, {"NOTIFY_SOCKET": "/again", "EXTRA": "1"})
    assert env == {"HOME": "/h", "EXTRA": "1"}


# -- the supervisor's states, without processes ---------------------------------------------------
def test_the_supervisor_table_lists_the_real_moves_and_nothing_else():
    table = supervisor.TRANSITIONS
    assert table.states == ("idle", "running", "restarting", "parked", "stopped", "failed")
    allowed = {(state, new) for state in table.states for new in table.states if table.allows(state, new)}
    assert allowed == {
        ("idle", "running"), ("idle", "restarting"), ("idle", "parked"), ("idle", "failed"), ("idle", "stopped"),
        ("running", "restarting"), ("running", "parked"), ("running", "failed"), ("running", "stopped"),
        ("restarting", "running"), ("restarting", "restarting"), ("restarting", "parked"),
        ("restarting", "stopped"), ("parked", "stopped"), ("failed", "stopped"), ("stopped", "stopped")}
    for state, new in (("running", "idle"), ("parked", "running"), ("stopped", "running"), ("restarting", "failed")):
        with pytest.raises(IllegalTransition, match=f"supervisor: {state} -> {new}"):
            table.check(state, new)


def test_every_decision_names_a_state_a_run_can_end_in():
    assert {decision: decision.state for decision in Decision} == {
        Decision.RESTART: "restarting", Decision.PARK: "parked", Decision.STOP: "stopped", Decision.FAIL: "failed"}
    assert all(supervisor.TRANSITIONS.allows("running", decision.state) for decision in Decision)


class Recorder:
    """A listener that keeps what the supervisor tells it."""

    def __init__(self):
        self.events, self.exits = [], []

    def runner_event(self, type, data):
        self.events.append(type)

    def runner_started(self, pid):
        raise AssertionError("nothing can start here")

    def runner_line(self, line):
        raise AssertionError("nothing can write here")

    def runner_exited(self, exit, verdict):
        self.exits.append((exit, verdict))


@pytest.mark.parametrize("policy, decision", [("none", Decision.FAIL), ("on-crash", Decision.RESTART)])
def test_a_spawn_that_fails_is_judged_and_stop_ends_any_state(tmp_path, policy, decision):
    scheduler, listener = Scheduler(), Recorder()
    runner = Supervisor(name="t", argv=[str(tmp_path / "missing")], cwd=tmp_path, env={},
                        stderr_log=tmp_path / "stderr.log", scheduler=scheduler,
                        config=SupervisionConfig(backoff_base_s=60.0), restart_policy=policy, listener=listener,
                        greeting=lambda: b"", goodbye=lambda reason: b"")
    try:
        assert runner.state == "idle"
        runner.start()
        [(exit, verdict)] = listener.exits
        assert "cannot start" in exit.spawn_error and verdict.action is decision
        assert runner.state == decision.state and listener.events[0] == "runner_crashed"
        runner.stop("done")
        assert runner.state == "stopped" and runner.snapshot()["restart_in_s"] is None
        runner.stop("again")  # staying stopped is a listed move
        assert runner.state == "stopped"
    finally:
        scheduler.stop()


# -- real runtimes ----------------------------------------------------------------------------
@pytest.fixture
def fast(make_daemon):
    return make_daemon(supervision=FAST)


def demo_session(client, cwd, **params) -> str:
    return client.call("session.create", runtime=params.pop("runtime", "demo"), cwd=str(cwd), **params)["session_id"]


def test_kill_9_mid_turn_restarts_with_backoff_and_the_daemon_keeps_serving(fast, tmp_path):
    client = client_of(fast, "repl")
    session_id = demo_session(client, tmp_path)
    watcher = Watcher(client, session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text="sleep 30")["turn_id"]
    watcher.wait("turn_started", turn_id=turn_id)
    first_pid = client.call("session.get", session_id=session_id)["runner"]["pid"]
    os.kill(first_pid, signal.SIGKILL)

    crashed = watcher.wait("runner_crashed")["data"]
    assert (crashed["signal"], crashed["signal_name"], crashed["rapid"]) == (signal.SIGKILL, "SIGKILL", True)
    done = watcher.wait("turn_done", turn_id=turn_id)["data"]
    assert done["status"] == "failed" and "killed by SIGKILL" in done["reason"]
    assert watcher.wait("runner_restarting")["data"] == {"delay_s": 0.05, "attempt": 2}
    watcher.wait("runner_started", attempt=2)
    info = wait_state(client, session_id, "idle")
    assert info["runner"]["restarts"] == 1 and info["runner"]["pid"] != first_pid
    assert info["runner"]["last_exit"]["signal_name"] == "SIGKILL"
    order = watcher.types()
    assert (order.index("runner_crashed") < order.index("turn_done") < order.index("runner_restarting")
            < len(order) - 1 - order[::-1].index("runner_started"))
    assert watcher.find("session_state", state="restarting")

    assert client.call("system.ping") == "pong"
    again = client.call("session.send", session_id=session_id, text="still there?")["turn_id"]
    assert watcher.wait("turn_done", turn_id=again)["data"]["status"] == "completed"
    os.kill(info["runner"]["pid"], signal.SIGKILL)  # a second rapid crash waits twice as long
    assert watcher.wait("runner_restarting", count=2)["data"] == {"delay_s": 0.1, "attempt": 3}
    watcher.close()


def test_five_rapid_crashes_park_the_session(fast, tmp_path):
    client = client_of(fast, "repl")
    session_id = demo_session(client, tmp_path, args=["--exit-on-start", "1"])
    watcher = Watcher(client, session_id, since=0)
    parked = watcher.wait("runner_parked", timeout=20)["data"]
    assert parked["rapid_failures"] == 5 and "5 rapid failures" in parked["reason"]
    assert len(watcher.find("runner_crashed")) == 5
    assert [e["data"]["delay_s"] for e in watcher.find("runner_restarting")] == [0.05, 0.1, 0.2, 0.2]
    info = wait_state(client, session_id, "parked")
    assert info["runner"]["pid"] is None and "exiting with 1 as asked" in info["stderr_tail"][-1]
    with pytest.raises(RpcCallError) as refused:
        client.call("session.send", session_id=session_id, text="hello?")
    assert refused.value.code == SESSION_NOT_ACCEPTING
    assert client.call("session.close", session_id=session_id)["state"] == "stopped"
    watcher.close()


def test_exit_78_parks_at_once(fast, tmp_path):
    client = client_of(fast, "repl")
    session_id = demo_session(client, tmp_path, args=["--exit-on-start", "78"])
    watcher = Watcher(client, session_id, since=0)
    parked = watcher.wait("runner_parked")["data"]
    assert parked["exit_code"] == 78 and "permanent failure" in parked["reason"]
    assert wait_state(client, session_id, "parked")
    assert len(watcher.find("runner_crashed")) == 1 and not watcher.find("runner_restarting")
    watcher.close()


def test_restart_policy_none_fails_the_session(fast, tmp_path):
    client = client_of(fast, "repl")
    session_id = demo_session(client, tmp_path, restart="none")
    watcher = Watcher(client, session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text="exit 3")["turn_id"]
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "failed"
    info = wait_state(client, session_id, "failed")
    assert info["runner"]["last_exit"]["exit_code"] == 3 and not watcher.find("runner_restarting")
    watcher.close()


def test_a_runtime_that_never_says_ready_is_killed_and_judged_like_a_crash(make_daemon, tmp_path):
    client = client_of(make_daemon(supervision=dataclasses.replace(FAST, ready_timeout_s=0.5)), "repl")
    mute = [sys.executable, "-c", "import time; time.sleep(60)"]
    session_id = client.call("session.create", runtime="custom", cwd=str(tmp_path), args=mute,
                             restart="none")["session_id"]
    watcher = Watcher(client, session_id, since=0)
    error = watcher.wait("runtime_protocol_error", reason="no_ready")["data"]
    assert "no ready message within 0.5 s" in error["detail"]
    info = wait_state(client, session_id, "failed")
    assert info["runner"]["last_exit"]["signal"] == signal.SIGKILL
    assert not is_alive(info["runner"]["pid"])
    watcher.close()


def test_a_runtime_that_exits_cleanly_by_itself_ends_the_session(fast, tmp_path):
    client = client_of(fast, "repl")
    session_id = demo_session(client, tmp_path)
    watcher = Watcher(client, session_id, since=0)
    client.call("session.send", session_id=session_id, text="exit 0")
    closed = watcher.wait("session_closed")["data"]
    assert "exited on its own" in closed["reason"] and closed["by"] is None
    assert watcher.find("runner_exited")[0]["data"]["exit_code"] == 0
    assert wait_state(client, session_id, "stopped")
    watcher.close()


def test_a_long_enough_run_resets_the_backoff(make_daemon, tmp_path):
    config = SupervisionConfig(backoff_base_s=0.05, backoff_max_s=1.0, rapid_window_s=0.2, stable_after_s=0.6)
    running = make_daemon(supervision=config)
    client = client_of(running, "repl")
    session_id = demo_session(client, tmp_path)
    watcher = Watcher(client, session_id, since=0)
    for attempt in (1, 2):
        pid = wait_state(client, session_id, "idle")["runner"]["pid"]
        os.kill(pid, signal.SIGKILL)
        watcher.wait("runner_started", attempt=attempt + 1)
    pid = wait_state(client, session_id, "idle")["runner"]["pid"]
    started = watcher.find("runner_started", attempt=3)[0]["ts"]
    wait_for(lambda: time.time() - started > config.stable_after_s + 0.1, 5, message="a stable run")
    os.kill(pid, signal.SIGKILL)
    watcher.wait("runner_restarting", count=3)
    delays = [event["data"]["delay_s"] for event in watcher.find("runner_restarting")]
    assert delays[:2] == [0.05, 0.1] and delays[2] == 0.05
    assert watcher.find("runner_crashed")[2]["data"]["rapid"] is False
    watcher.close()


def test_the_runtimes_children_die_with_it(fast, tmp_path):
    client = client_of(fast, "repl")
    session_id = demo_session(client, tmp_path)
    watcher = Watcher(client, session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text="run echo $$ > child.pid; exec sleep 60")["turn_id"]
    request_id = watcher.wait("permission_request", turn_id=turn_id)["data"]["request_id"]
    client.call("permission.answer", request_id=request_id, result={"approve": True})
    child = int(wait_for(lambda: (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text().strip()))
    assert is_alive(child)
    os.kill(client.call("session.get", session_id=session_id)["runner"]["pid"], signal.SIGKILL)
    # The sleep ran in a process group of its own, but inside the runtime's session.
    wait_for(lambda: not is_alive(child), 5, message="the runtime's child to die")
    watcher.close()


@pytest.fixture
def stubborn(make_daemon, monkeypatch):
    monkeypatch.syspath_prepend(str(ENTRYPOINT_DIR))
    return make_daemon(supervision=FAST)


def test_close_escalates_to_sigkill_for_a_runtime_that_ignores_stop_and_sigterm(stubborn, tmp_path):
    client = client_of(stubborn, "repl")
    session_id = demo_session(client, tmp_path, runtime="stubborn")
    pid = wait_state(client, session_id, "idle")["runner"]["pid"]
    started = time.monotonic()
    closed = client.call("session.close", session_id=session_id)
    took = time.monotonic() - started
    assert FAST.kill_after_s <= took < FAST.kill_after_s + 2
    assert closed["state"] == "stopped" and not is_alive(pid)
    stopped = [e for e in client.call("session.history", session_id=session_id)["events"]
               if e["type"] == "runner_stopped"]
    assert stopped[0]["data"]["how"] == "SIGKILL" and stopped[0]["data"]["signal_name"] == "SIGKILL"


def test_a_turn_that_ignores_its_cancel_is_ended_by_killing_the_runtime(stubborn, tmp_path):
    client = client_of(stubborn, "repl")
    session_id = demo_session(client, tmp_path, runtime="stubborn")
    watcher = Watcher(client, session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text="work forever")["turn_id"]
    watcher.wait("text_chunk", turn_id=turn_id)
    client.call("session.cancel", session_id=session_id)
    crashed = watcher.wait("runner_crashed", timeout=5)["data"]
    assert "did not end within 1 s of its cancel" in crashed["reason"]
    assert watcher.wait("turn_done", turn_id=turn_id)["data"]["status"] == "cancelled"
    watcher.wait("runner_started", attempt=2)
    assert wait_state(client, session_id, "idle")
    watcher.close()
