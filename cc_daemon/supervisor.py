"""Process supervision for runtimes: spawn, watch, restart with backoff, park, stop.

Owns: one runtime process at a time per ``Supervisor`` — spawned in a session (and so a
process group) of its own with a scrubbed environment; its stdin fed from a queue by a
writer thread (so no caller ever blocks on a full pipe), its stdout cut into bounded lines
for the listener, its stderr appended to a log file with the tail kept in memory; its exit
judged by the restart policy (``RestartTracker``: backoff from 2 s doubling to 120 s, a crash
within 10 s of starting is rapid, 5 rapid crashes in a row park, exit code 78 parks at once,
a run of 60 s resets the backoff) into a ``Decision``; its states, which move only along
``TRANSITIONS``; and the stop sequence (``stop`` message, SIGTERM to the process tree after
2 s, SIGKILL by 5 s). Every transition is reported as a ``runner_*`` event.

Must not: decode the runtime protocol (lines go to the listener as bytes), or know what a
session or a turn is. Listener calls are made without the supervisor's lock held, and the
lock is never held while calling out, so a listener may call back into the supervisor.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Protocol

if TYPE_CHECKING:
    import subprocess

from .runtimes.protocol import LineSplitter, Oversized
from .safe_paths import make_private_dir, open_private
from .timers import Scheduler, TimerHandle
from .transitions import Transitions

log = logging.getLogger("cc_daemon.supervisor")

#: Exit status meaning "permanent failure, do not retry" (EX_CONFIG; systemd's RestartPreventExitStatus=78).
PARK_EXIT_CODE = 78
RESTART_POLICIES = ("none", "on-crash")
#: Variables that belong to the daemon's own service manager, never to its children.
SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
SCRUBBED_ENV_PREFIXES = ("LISTEN_",)

STDERR_TAIL_LINES = 40
STDERR_LINE_CHARS = 500
STDERR_LOG_MAX_BYTES = 5 * 1024 * 1024
#: How long, after the process exited, its pipes may take to drain before we give up on them.
DRAIN_TIMEOUT_S = 5.0

# -- states -----------------------------------------------------------------------------------
IDLE, RUNNING, RESTARTING, PARKED, STOPPED, FAILED = "idle", "running", "restarting", "parked", "stopped", "failed"
#: Every move a supervisor makes. A run's exit is judged (``Decision``) into one of the four
#: states after ``RUNNING``; a spawn that fails is judged the same way, from ``IDLE`` or
#: ``RESTARTING``. ``stop`` with no process running moves to ``STOPPED`` at once, from any
#: state (staying there when the runtime had already exited with 0); with one running, its
#: exit is judged ``STOP``.
TRANSITIONS = Transitions("supervisor", {
    IDLE: {RUNNING, RESTARTING, PARKED, FAILED, STOPPED},
    RUNNING: {RESTARTING, PARKED, FAILED, STOPPED},
    # Policy none never restarts, so a restart is never judged a failure.
    RESTARTING: {RUNNING, RESTARTING, PARKED, STOPPED},
    PARKED: {STOPPED},
    STOPPED: {STOPPED},
    FAILED: {STOPPED},
})


class Decision(Enum):
    """What the restart policy decides after an exit. Its value is the state the decision
    leaves the supervisor in, and so the session it runs for (a session's states after an
    exit are its supervisor's): the one place a decision becomes a state."""

    RESTART = RESTARTING
    PARK = PARKED
    STOP = STOPPED
    FAIL = FAILED

    @property
    def state(self) -> str:
        return self.value


@dataclass(frozen=True)
class SupervisionConfig:
    """Timings of supervision. The defaults are the production values; tests shrink them."""

    backoff_base_s: float = 2.0
    backoff_max_s: float = 120.0
    rapid_window_s: float = 10.0
    max_rapid_failures: int = 5
    stable_after_s: float = 60.0
    stop_grace_s: float = 2.0
    kill_after_s: float = 5.0
    #: After a turn's cancel, how long its runtime has to end the turn before it is killed.
    cancel_grace_s: float = 5.0
    #: From spawn to the runtime's ``ready``; a runtime that never answers is killed (a crash).
    ready_timeout_s: float = 30.0


@dataclass(frozen=True)
class ExitInfo:
    """How one run of a runtime ended."""

    exit_code: int | None  # None when killed by a signal, or when it never started
    signal: int | None
    ran_s: float
    requested: bool  # the daemon asked it to stop
    spawn_error: str | None = None

    def describe(self) -> str:
        if self.spawn_error:
            return self.spawn_error
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)} after {self.ran_s:.1f} s"
        return f"exited with code {self.exit_code} after {self.ran_s:.1f} s"

    def as_dict(self) -> dict:
        return {**asdict(self), "ran_s": round(self.ran_s, 3), "signal_name": signal_name(self.signal)}


def signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class Verdict:
    """What to do after an exit (to restart: after ``delay_s``), and why."""

    action: Decision
    reason: str
    delay_s: float = 0.0
    rapid: bool = False
    rapid_failures: int = 0


class RestartTracker:
    """The restart policy as a pure state machine over exits (no processes, no clock)."""

    def __init__(self, config: SupervisionConfig, policy: str):
        if policy not in RESTART_POLICIES:
            raise ValueError(f"unknown restart policy {policy!r}")
        self.config = config
        self.policy = policy
        self.rapid_failures = 0
        self._next_delay = config.backoff_base_s

    def judge(self, exit: ExitInfo) -> Verdict:
        config = self.config
        if exit.requested:
            return Verdict(Decision.STOP, "stopped on request")
        if exit.exit_code == 0:
            return Verdict(Decision.STOP, f"the runtime exited on its own ({exit.describe()})")
        if exit.exit_code == PARK_EXIT_CODE:
            return Verdict(Decision.PARK, f"exit code {PARK_EXIT_CODE}: the runtime reported a permanent failure")
        if self.policy == "none":
            return Verdict(Decision.FAIL, f"{exit.describe()}; the restart policy is none")
        if exit.ran_s >= config.stable_after_s:
            self._next_delay = config.backoff_base_s  # it ran long enough: forget past trouble
            self.rapid_failures = 0
        rapid = exit.ran_s < config.rapid_window_s
        self.rapid_failures = self.rapid_failures + 1 if rapid else 0
        if self.rapid_failures >= config.max_rapid_failures:
            return Verdict(Decision.PARK, f"{self.rapid_failures} rapid failures in a row (each within "
                                          f"{config.rapid_window_s:g} s of starting)", rapid=True,
                           rapid_failures=self.rapid_failures)
        delay = self._next_delay
        self._next_delay = min(delay * 2, config.backoff_max_s)
        return Verdict(Decision.RESTART, exit.describe(), delay, rapid, self.rapid_failures)


def child_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a runtime: ``base`` plus ``overrides``, minus the daemon's
    service-manager variables (a child must never notify systemd as if it were the daemon)."""
    merged = {**base, **overrides}
    return {name: value for name, value in merged.items()
            if name not in SCRUBBED_ENV and not name.startswith(SCRUBBED_ENV_PREFIXES)}


def session_groups(session_id: int) -> set[int]:
    """Process groups in the kernel session ``session_id`` (Linux /proc; empty elsewhere)."""
    groups: set[int] = set()
    try:
        entries = os.scandir("/proc")
    except OSError:
        return groups
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(os.path.join(entry.path, "stat"), "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parens.
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 3 and int(fields[3]) == session_id:
                groups.add(int(fields[2]))
    return groups


def signal_tree(leader: int, sig: int) -> None:
    """Signal the runtime's process group and every other group in its session, so that a
    child which made a group of its own (our runtimes do, once per turn) goes down too."""
    for group in {leader, *session_groups(leader)}:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass


class RunnerListener(Protocol):
    """What a supervisor reports to its owner (called from the supervisor's threads)."""

    def runner_event(self, type: str, data: dict) -> None: ...

    def runner_started(self, pid: int) -> None: ...

    def runner_line(self, line: bytes | Oversized) -> None: ...

    def runner_exited(self, exit: ExitInfo, verdict: Verdict) -> None: ...


class Runner(Protocol):
    """What a supervisor's owner calls: ``Supervisor`` is the one implementation, and tests
    stand in for it with fakes that run no process."""

    stderr: StderrLog

    def start(self) -> None: ...

    def send(self, data: bytes) -> bool: ...

    def stop(self, reason: str) -> None: ...

    def kill(self, reason: str) -> None: ...

    def snapshot(self) -> dict: ...


@contextmanager
def stop_signals_unblocked() -> Iterator[None]:
    """The calling thread's SIGTERM and SIGINT unblocked while a runtime is spawned.

    A child inherits its parent thread's signal mask, across exec too, and the daemon's
    threads block those two so that the main thread gets them (``transport.kernel``). A
    runtime spawned from such a thread would be deaf to the SIGTERM that stops it, and so
    would every program it starts."""
    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StderrLog:
    """A runtime's stderr: appended to a file (rotated once at a size cap), tail in memory."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        make_private_dir(path.parent)

    def note(self, text: str) -> None:
        """A line of our own (a spawn or exit marker), in the file only."""
        self._append(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {text} ---\n".encode())

    def add(self, raw: bytes) -> None:
        self._append(raw if raw.endswith(b"\n") else raw + b"\n")
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with self._lock:
            self._tail.append(line[:STDERR_LINE_CHARS])

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)

    def _append(self, data: bytes) -> None:
        with self._lock:
            try:
                if self.path.exists() and self.path.stat().st_size + len(data) > STDERR_LOG_MAX_BYTES:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("cannot write %s: %s", self.path, exc)


class _Run:
    """One process of a runtime and the threads that serve it."""

    def __init__(self, process: subprocess.Popen, greeting: bytes):
        self.process = process
        self.pid = process.pid
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.outbox.put(greeting)
        self.exited = threading.Event()  # reaped
        self.finished = threading.Event()  # the exit has been judged and reported
        self._signal_lock = threading.Lock()
        self._reaped = False
        self.stop_requested_at: float | None = None
        self.escalation: str | None = None
        self.kill_reason: str | None = None
        self.readers: list[threading.Thread] = []

    def signal(self, sig: int) -> None:
        """Signal the process tree unless the leader was reaped (its id could be reused)."""
        with self._signal_lock:
            if not self._reaped:
                signal_tree(self.pid, sig)

    def reap(self) -> int:
        """Wait for the leader to exit, kill what it left behind, then reap it."""
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with self._signal_lock:
            # The leader is a zombie: its id still names the group, so this hits only its own.
            signal_tree(self.pid, signal.SIGKILL)
            code = self.process.wait()
            self._reaped = True
        self.exited.set()
        self.outbox.put(None)
        return code


class Supervisor:
    """Keeps one runtime process running according to its restart policy. Thread-safe."""

    def __init__(self, *, name: str, argv: list[str], cwd: Path, env: Mapping[str, str], stderr_log: Path,
                 scheduler: Scheduler, config: SupervisionConfig, restart_policy: str, listener: RunnerListener,
                 greeting: Callable[[], bytes], goodbye: Callable[[str], bytes]):
        self.name = name
        self._argv = argv
        self._cwd = cwd
        self._env = dict(env)
        self.stderr = StderrLog(stderr_log)
        self._scheduler = scheduler
        self._config = config
        self._tracker = RestartTracker(config, restart_policy)
        self._listener = listener
        self._greeting = greeting
        self._goodbye = goodbye
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._timer: TimerHandle | None = None
        self._next_restart_at: float | None = None
        self._stopping = False
        self._spawns = 0
        self.state = IDLE
        self.last_exit: ExitInfo | None = None

    # -- public -----------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn()

    def send(self, data: bytes) -> bool:
        """Queue ``data`` for the runtime's stdin; False when no process is running."""
        with self._lock:
            run = self._run
        if run is None or run.exited.is_set():
            return False
        run.outbox.put(data)
        return True

    def stop(self, reason: str) -> None:
        """Stop for good: ``stop`` message, SIGTERM after the grace, SIGKILL by the deadline.
        Blocks until the exit has been reported (at most about ``kill_after_s`` + drain)."""
        self.wait_stopped(self.request_stop(reason))

    def request_stop(self, reason: str) -> _Run | None:
        """First half of ``stop``, so that many runtimes can be asked at once."""
        with self._lock:
            self._stopping = True
            self._cancel_restart()
            run = self._run
            if run is None:
                self._set_state(STOPPED)
                return None
            run.stop_requested_at = time.monotonic()
            run.escalation = "stop"
        run.outbox.put(self._goodbye(reason))
        return run

    def wait_stopped(self, run: _Run | None) -> None:
        if run is None:
            return
        config, requested = self._config, run.stop_requested_at or time.monotonic()
        for escalation, sig, at in (("SIGTERM", signal.SIGTERM, requested + config.stop_grace_s),
                                    ("SIGKILL", signal.SIGKILL, requested + config.kill_after_s)):
            if run.exited.wait(max(0.0, at - time.monotonic())):
                break
            run.escalation = escalation
            run.signal(sig)
        if not run.finished.wait(config.kill_after_s + 2 * DRAIN_TIMEOUT_S):
            log.error("%s: pid %d did not finish stopping", self.name, run.pid)

    def kill(self, reason: str) -> None:
        """SIGKILL the running process now; its exit is judged like any crash."""
        with self._lock:
            run = self._run
        if run is not None:
            run.kill_reason = reason
            run.signal(signal.SIGKILL)

    def snapshot(self) -> dict:
        with self._lock:
            run, next_at, exit = self._run, self._next_restart_at, self.last_exit
            return {
                "state": self.state,
                "pid": run.pid if run is not None else None,
                "started_at": run.started_wall if run is not None else None,
                "spawns": self._spawns,
                "restarts": max(0, self._spawns - 1),
                "rapid_failures": self._tracker.rapid_failures,
                "restart_in_s": round(max(0.0, next_at - time.monotonic()), 3) if next_at is not None else None,
                "last_exit": exit.as_dict() if exit is not None else None,
                "stderr_log": str(self.stderr.path),
            }

    # -- spawning ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        greeting = self._greeting()
        spawn_error = None
        with self._lock:
            self._timer = self._next_restart_at = None
            if self._stopping:
                return
            self._spawns += 1
            attempt = self._spawns
            # Imported at the first spawn: ~0.2 MB of idle RSS a daemon without sessions never uses.
            import subprocess

            try:
                with stop_signals_unblocked():
                    process = subprocess.Popen(self._argv, cwd=self._cwd, env=child_env(os.environ, self._env),
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, start_new_session=True)
            except OSError as exc:
                spawn_error = f"cannot start {self._argv[0]}: {exc.strerror or exc}"
            else:
                run = self._run = _Run(process, greeting)
                self._set_state(RUNNING)
        if spawn_error is not None:
            self.stderr.note(spawn_error)
            self._judge_and_report(None, ExitInfo(None, None, 0.0, False, spawn_error))
            return
        self.stderr.note(f"spawn {attempt}: pid {run.pid}")
        self._emit("runner_started", {"pid": run.pid, "attempt": attempt})
        self._notify(self._listener.runner_started, run.pid)
        threads = {role: threading.Thread(target=target, args=(run,), name=f"ccd-{self.name}-{role}", daemon=True)
                   for target, role in ((self._write_stdin, "stdin"), (self._read_stdout, "stdout"),
                                        (self._read_stderr, "stderr"), (self._watch, "wait"))}
        run.readers = [threads["stdout"], threads["stderr"]]
        for thread in threads.values():
            thread.start()

    # -- the threads of a run ---------------------------------------------------------------
    def _write_stdin(self, run: _Run) -> None:
        stream = run.process.stdin
        while (data := run.outbox.get()) is not None:
            try:
                stream.write(data)
                stream.flush()
            except (OSError, ValueError):
                break  # the runtime closed its stdin or died; the waiter reports the exit
        try:
            stream.close()
        except OSError:
            pass

    def _read_stdout(self, run: _Run) -> None:
        splitter = LineSplitter()
        fd = run.process.stdout.fileno()
        try:
            while chunk := os.read(fd, 65536):
                for line in splitter.feed(chunk):
                    self._notify(self._listener.runner_line, line)
        except OSError as exc:
            log.warning("%s: reading stdout of pid %d failed: %s", self.name, run.pid, exc)
        for line in splitter.finish():
            self._notify(self._listener.runner_line, line)
        run.process.stdout.close()

    def _read_stderr(self, run: _Run) -> None:
        stream = run.process.stderr
        for raw in iter(lambda: stream.readline(8192), b""):
            self.stderr.add(raw)
        stream.close()

    def _watch(self, run: _Run) -> None:
        code = run.reap()
        # Everything it wrote before dying is delivered before its exit is reported.
        for reader in run.readers:
            reader.join(DRAIN_TIMEOUT_S)
        exit = ExitInfo(code if code >= 0 else None, -code if code < 0 else None,
                        time.monotonic() - run.started_at, run.stop_requested_at is not None)
        self.stderr.note(f"pid {run.pid} {exit.describe()}")
        try:
            self._judge_and_report(run, exit)
        finally:
            run.finished.set()

    # -- exits ------------------------------------------------------------------------------
    def _judge_and_report(self, run: _Run | None, exit: ExitInfo) -> None:
        with self._lock:
            if self._run is run:
                self._run = None
            if self._stopping and not exit.requested:
                exit = ExitInfo(exit.exit_code, exit.signal, exit.ran_s, True, exit.spawn_error)
            verdict = self._tracker.judge(exit)
            self.last_exit = exit
            self._set_state(verdict.action.state)
        details = exit.as_dict()
        if exit.requested:
            self._emit("runner_stopped", {**details, "how": run.escalation if run is not None else None})
        elif verdict.action is Decision.STOP:
            self._emit("runner_exited", details)
        else:
            self._emit("runner_crashed", {**details, "rapid": exit.ran_s < self._config.rapid_window_s,
                                          "rapid_failures": self._tracker.rapid_failures,
                                          "reason": run.kill_reason if run is not None else None})
        self._notify(self._listener.runner_exited, exit, verdict)
        if verdict.action is Decision.PARK:
            self._emit("runner_parked", {"reason": verdict.reason, "exit_code": exit.exit_code,
                                         "rapid_failures": verdict.rapid_failures})
        elif verdict.action is Decision.RESTART:
            self._schedule_restart(verdict.delay_s)

    def _schedule_restart(self, delay_s: float) -> None:
        # Armed only after the exit and the restart were reported, so the next spawn's
        # events never overtake them.
        with self._lock:
            attempt = self._spawns + 1
        self._emit("runner_restarting", {"delay_s": delay_s, "attempt": attempt})
        with self._lock:
            if not self._stopping:
                self._next_restart_at = time.monotonic() + delay_s
                self._timer = self._scheduler.call_later(delay_s, self._spawn)

    def _set_state(self, state: str) -> None:
        """The one way the state changes (the lock is held): only along ``TRANSITIONS``."""
        TRANSITIONS.check(self.state, state)
        self.state = state

    def _cancel_restart(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._next_restart_at = None

    # -- reporting --------------------------------------------------------------------------
    def _emit(self, type: str, data: dict) -> None:
        self._notify(self._listener.runner_event, type, data)

    def _notify(self, callback: Callable, *args) -> None:
        """Call the listener; its failure is logged, never allowed to kill a pipe reader."""
        try:
            callback(*args)
        except Exception:
            log.exception("%s: listener %s failed", self.name, getattr(callback, "__name__", callback))
