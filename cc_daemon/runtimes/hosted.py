"""What the ``claude`` and ``codex`` runtimes share: hosting one agent CLI for a whole
session and relaying its permission questions through the daemon.

Owns: the hosted process (``HostedProcess``: started in the session's cwd, one JSON object
per line on its stdin, every line of its stdout posted to the runtime's inbox, stopped by
closing stdin, then SIGTERM, then SIGKILL) and one turn's exchange with it (``Exchange``:
the loop that waits on the daemon and the CLI at once, the questions in flight under ids
of our own, answers passed on as they come, an interrupt on cancel and a deadline for it).

Must not: know either CLI's wire format (the subclasses of ``Exchange`` do) or decide a
permission itself.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

from .agent import Channel, Turn

#: The types of the messages a hosted process's reader posts to the runtime's inbox.
LINE, EXITED = "hosted.line", "hosted.exited"
#: How long a stopped CLI gets between closing its stdin, SIGTERM and SIGKILL.
STOP_GRACE_S = 2.0
#: How long an interrupted turn may take to end on its own before its process is stopped:
#: well inside the daemon's cancel grace (5 s by default), after which the daemon kills the
#: whole runtime; stopping only the CLI keeps the runtime, and the next turn resumes.
INTERRUPT_GRACE_S = 2.0


class HostedProcess:
    """One running CLI: records to its stdin, its stdout lines to the channel's inbox."""

    def __init__(self, argv: list[str], cwd: str, channel: Channel):
        self.child = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._write_lock = threading.Lock()
        threading.Thread(target=self._pump, args=(channel,), name="hosted-reader", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.child.pid

    def _pump(self, channel: Channel) -> None:
        with self.child.stdout:
            for raw in self.child.stdout:
                channel.post({"type": LINE, "pid": self.pid, "line": raw.decode("utf-8", "replace")})
        channel.post({"type": EXITED, "pid": self.pid, "code": self.child.wait()})

    def send(self, record: dict[str, Any]) -> None:
        """Write one record; a dead process is noticed by the reader, not here."""
        with self._write_lock:
            try:
                self.child.stdin.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                self.child.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def alive(self) -> bool:
        return self.child.poll() is None

    def stop(self) -> None:
        """End it: stdin closed (the CLI exits on its own), then SIGTERM, then SIGKILL."""
        with self._write_lock:
            try:
                self.child.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                self.child.wait(STOP_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                self.child.send_signal(sig)
        self.child.wait()


def parse_line(line: str) -> dict[str, Any] | None:
    """One line of a CLI's stdout as a record, or None (blank, or not a JSON object)."""
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class Ending(Enum):
    """How a turn's exchange ended."""
    FINISHED = "finished"  # the CLI said the turn is over
    EXITED = "exited"  # the CLI died
    OVERDUE = "overdue"  # interrupted, it did not end the turn in time, and was stopped


class Exchange(ABC):
    """One turn with a hosted CLI. Subclasses read its records and write its answers."""

    def __init__(self, turn: Turn, process: HostedProcess):
        self.turn = turn
        self.process = process
        #: Our request id (given to the daemon) -> (the CLI's request id, what it asked about).
        self.questions: dict[str, tuple[Any, Any]] = {}
        self.interrupted_at: float | None = None
        self.exit_code: int | None = None

    @abstractmethod
    def on_record(self, record: dict[str, Any]) -> bool:
        """Handle one record of the CLI; True once the turn is over."""

    @abstractmethod
    def answer(self, theirs: Any, asked: Any, approve: bool, reason: str) -> None:
        """Give the CLI the daemon's answer to its question ``theirs``."""

    @abstractmethod
    def interrupt(self) -> None:
        """Ask the CLI to end the turn now."""

    def on_idle(self) -> None:
        """Called after each wake-up (the subclass's chance to act on what it learned)."""

    # -- questions ------------------------------------------------------------------------
    def ask(self, theirs: Any, tool: str, tool_input: Any, asked: Any, rationale: str | None) -> None:
        ours = f"q{len(self.questions) + 1}-{str(theirs)[:64]}"
        self.questions[ours] = (theirs, asked)
        self.turn.request_permission(ours, tool, tool_input, rationale)

    def withdraw(self, theirs: Any, reason: str) -> None:
        for ours, (asked_as, _) in list(self.questions.items()):
            if asked_as == theirs:
                del self.questions[ours]
                self.turn.withdraw_permission(ours, reason)

    def _pass_answers(self) -> None:
        for ours, (theirs, asked) in list(self.questions.items()):
            answer = self.turn.take_answer(ours)
            if answer is not None:
                del self.questions[ours]
                self.answer(theirs, asked, *answer)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> Ending:
        """Wait on the daemon and the CLI until the turn ends, one way or another."""
        while True:
            if self.turn.cancelled and self.interrupted_at is None:
                self.interrupted_at = time.monotonic()
                self.interrupt()
            if self.interrupted_at is not None and time.monotonic() - self.interrupted_at > INTERRUPT_GRACE_S:
                self.turn.log("warning", f"the CLI did not end the turn within {INTERRUPT_GRACE_S:g} s of the "
                                         "interrupt; stopping it (the next turn resumes the session)")
                self.process.stop()
                return Ending.OVERDUE
            message = self.turn.poll(0.1 if self.interrupted_at is not None else None)
            self._pass_answers()
            self.on_idle()
            if message is None or message.get("pid") != self.process.pid:
                continue  # the daemon's (handled by poll), or from a process that is gone
            if message["type"] == EXITED:
                self.exit_code = message["code"]
                return Ending.EXITED
            record = parse_line(message["line"])
            if record is None:
                if message["line"].strip():
                    self.turn.log("warning", f"the CLI printed a line that is not JSON: {message['line'][:200]}")
                continue
            if self.on_record(record):
                return Ending.FINISHED
