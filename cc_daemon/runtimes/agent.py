"""The runtime side of RFC 0004: what a runtime process uses to talk to the daemon.

Owns: the channel (the daemon's messages read from stdin on a thread into a queue; our
messages written to stdout as single flushed lines, from any thread), the handshake
(``init`` in, ``ready`` out), the turn loop, and running one child program per turn with
its stdout streamed and a cancel honoured. The built-in runtimes are small ``Agent``
classes on top of this; third-party runtimes written in Python may use it too.

Must not: import daemon code or jsonschema (runtimes start often; they stay light), or
write anything but protocol messages to stdout (diagnostics go to stderr, which the
daemon keeps in the session's log).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, BinaryIO, Callable

PROTOCOL_VERSION = 1
#: Keep text chunks well under the daemon's per-line limit (RFC 0004: 65536 characters).
CHUNK_CHARS = 16384
#: How long a turn's child program gets between SIGTERM and SIGKILL when the turn is cancelled.
CHILD_TERM_GRACE_S = 2.0


class Channel:
    """Newline-delimited JSON with the daemon. ``send`` is thread-safe."""

    def __init__(self, stdin_fd: int = 0, stdout: BinaryIO | None = None):
        self._stdin_fd = stdin_fd
        self._stdout = stdout or sys.stdout.buffer
        self._write_lock = threading.Lock()
        self._inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, name="daemon-reader", daemon=True).start()

    def send(self, type: str, **fields: Any) -> None:
        line = json.dumps({"type": type, **fields}, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._write_lock:
            self._stdout.write(line.encode())
            self._stdout.flush()

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message of the runtime's own (a line from a program it hosts) behind the
        daemon's, so that one loop waits on both sources; ``Turn.poll`` hands it back."""
        self._inbox.put(message)

    def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message from the daemon, or None after ``timeout`` s."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def _read(self) -> None:
        # Raw reads on the fd, not sys.stdin: a daemon thread blocked inside a buffered
        # reader makes the interpreter abort at exit.
        pending = b""
        while chunk := os.read(self._stdin_fd, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                self._accept(raw)
        # The daemon closed our stdin: it is gone or wants us gone. Either way, stop.
        self._inbox.put({"type": "stop", "reason": "stdin closed"})

    def _accept(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            print(f"ignoring a line from the daemon that is not JSON: {raw[:80]!r}", file=sys.stderr)
            return
        if isinstance(message, dict):
            self._inbox.put(message)


class Stopped(Exception):
    """The daemon asked this runtime to stop (or went away)."""


class Turn:
    """One turn as an agent sees it: the text, and the means to answer and to ask."""

    def __init__(self, channel: Channel, turn_id: str, text: str):
        self.channel = channel
        self.turn_id = turn_id
        self.text = text
        self.cancelled = False
        self.stop_requested = False
        self._answers: dict[str, dict[str, Any]] = {}
        self._next_request = 0

    # -- output -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """Stream ``text`` as one or more ``text`` chunks."""
        for start in range(0, len(text), CHUNK_CHARS):
            self.channel.send("text", turn_id=self.turn_id, text=text[start:start + CHUNK_CHARS])

    def tool_start(self, tool_use_id: str, tool: str, input: Any) -> None:
        self.channel.send("tool_start", turn_id=self.turn_id, tool_use_id=tool_use_id, tool=tool, input=input)

    def tool_end(self, tool_use_id: str, ok: bool, output: str = "") -> None:
        self.channel.send("tool_end", turn_id=self.turn_id, tool_use_id=tool_use_id, ok=ok,
                          output=output[:CHUNK_CHARS])

    def error(self, message: str) -> None:
        self.channel.send("error", turn_id=self.turn_id, message=message)

    def log(self, level: str, message: str) -> None:
        self.channel.send("log", level=level, message=message)

    # -- input --------------------------------------------------------------------------
    def ask_permission(self, tool: str, input: Any, rationale: str | None = None) -> tuple[bool, str]:
        """Ask the daemon whether to use ``tool``; blocks until answered. A cancelled turn
        counts as a refusal, so the caller never acts after a cancel."""
        self._next_request += 1
        request_id = f"perm-{self._next_request}"
        self.request_permission(request_id, tool, input, rationale)
        while request_id not in self._answers and not self.cancelled:
            self.poll(None)
        if self.cancelled:
            return False, "turn cancelled"
        return self.take_answer(request_id)  # type: ignore[return-value]

    def request_permission(self, request_id: str, tool: str, input: Any, rationale: str | None = None) -> None:
        """Ask without waiting: the answer is kept for ``take_answer`` when ``poll`` sees it."""
        self.channel.send("permission_request", turn_id=self.turn_id, request_id=request_id, tool=tool,
                          input=input, rationale=rationale)

    def take_answer(self, request_id: str) -> tuple[bool, str] | None:
        """(approve, reason) once the daemon answered ``request_id``, else None."""
        answer = self._answers.pop(request_id, None)
        if answer is None:
            return None
        return bool(answer.get("approve")), str(answer.get("reason", ""))

    def withdraw_permission(self, request_id: str, reason: str) -> None:
        """The question no longer stands (the program that asked gave it up): the daemon
        cancels the request and sends no answer."""
        self.channel.send("permission_withdrawn", turn_id=self.turn_id, request_id=request_id, reason=reason)

    def poll(self, timeout: float | None) -> dict[str, Any] | None:
        """Handle at most one message, waiting up to ``timeout`` s; returns one this class
        does not handle itself (a runtime's own, from ``Channel.post``), else None."""
        message = self.channel.receive(timeout)
        if message is None:
            return None
        kind = message.get("type")
        if kind == "cancel" and message.get("turn_id") == self.turn_id:
            self.cancelled = True
        elif kind == "stop":
            self.cancelled = self.stop_requested = True
        elif kind == "permission_response" and message.get("turn_id") == self.turn_id:
            self._answers[str(message.get("request_id"))] = message
        elif kind == "turn":
            self.error("a turn arrived while another was running; it was ignored")
        elif kind not in ("cancel", "permission_response", "init"):
            return message
        return None

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` while listening to the daemon; False when cancelled first."""
        deadline = time.monotonic() + seconds
        while not self.cancelled:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self.poll(min(remaining, 0.1))
        return False

    def run_child(self, argv: list[str], cwd: str, stdin_text: str | None,
                  on_line: Callable[[str], None]) -> int | None:
        """Run ``argv`` for this turn: ``stdin_text`` on its stdin (None: no stdin), each
        stdout line to ``on_line``. Returns its exit code, or None when the turn was
        cancelled. Its stderr goes to ours.

        The child gets a process group of its own so that a cancel, and the end of the
        turn, take down everything it started; nothing a turn runs outlives the turn.
        """
        child = subprocess.Popen(argv, cwd=cwd, process_group=0, stdout=subprocess.PIPE,
                                 stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL)
        pump = threading.Thread(target=_pump_lines, args=(child.stdout, on_line), daemon=True)
        pump.start()
        if stdin_text is not None:
            threading.Thread(target=_feed, args=(child.stdin, stdin_text), daemon=True).start()
        while not has_exited(child) and not self.cancelled:
            self.poll(0.05)
        if self.cancelled:
            signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + CHILD_TERM_GRACE_S
            while not has_exited(child) and time.monotonic() < deadline:
                time.sleep(0.02)
        # The child is exited but not yet reaped, so its group id cannot have been reused.
        signal_group(child, signal.SIGKILL)
        child.wait()
        pump.join(timeout=5)  # only a process that left our group could still hold stdout
        return None if self.cancelled else child.returncode

    def done(self, status: str = "completed", usage: dict[str, Any] | None = None,
             resume_token: str | None = None) -> None:
        fields: dict[str, Any] = {"turn_id": self.turn_id, "status": status}
        if usage is not None:
            fields["usage"] = usage
        if resume_token is not None:
            fields["resume_token"] = resume_token
        self.channel.send("turn_done", **fields)


def _pump_lines(stream: BinaryIO, on_line: Callable[[str], None]) -> None:
    with stream:
        for raw in stream:
            on_line(raw.decode("utf-8", "replace"))


def _feed(stream: BinaryIO, text: str) -> None:
    try:
        with stream:
            stream.write(text.encode())
    except BrokenPipeError:
        pass  # the program exited without reading all of its input; that is its choice


def has_exited(child: subprocess.Popen) -> bool:
    """True once ``child`` has exited, without reaping it (WNOWAIT)."""
    return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass


class Agent(ABC):
    """What a runtime implements: ``on_turn`` is called once per turn and must end it with
    ``turn.done``. Constructed after ``init``, before ``ready`` is sent."""

    def __init__(self, init: dict[str, Any], channel: Channel):
        self.init = init
        self.channel = channel
        self.cwd: str = init["cwd"]
        self.args: list[str] = list(init.get("args") or [])

    @abstractmethod
    def on_turn(self, turn: Turn) -> None: ...

    def close(self) -> None:
        """The runtime is about to exit: end what it hosts (nothing, by default)."""


def serve(make_agent: Callable[[dict[str, Any], Channel], Agent], *, runtime: str, version: str) -> int:
    """Run a runtime process: handshake, then one ``on_turn`` per ``turn`` until ``stop``."""
    channel = Channel()
    init = _wait_for_init(channel)
    if init is None:
        return 0
    agent = make_agent(init, channel)
    channel.send("ready", protocol=PROTOCOL_VERSION, runtime=runtime, version=version)
    try:
        return _turn_loop(agent, channel, runtime)
    finally:
        agent.close()


def _turn_loop(agent: Agent, channel: Channel, runtime: str) -> int:
    while True:
        message = channel.receive()
        kind = message.get("type") if message else None
        if kind == "stop":
            return 0
        if kind != "turn":
            continue  # a late cancel or answer for a turn that already ended
        turn = Turn(channel, str(message.get("turn_id")), str(message.get("text", "")))
        try:
            agent.on_turn(turn)
        except Exception as exc:  # one bad turn must not end the session
            print(f"{runtime}: turn {turn.turn_id} failed: {exc!r}", file=sys.stderr)
            turn.error(f"{runtime} runtime error: {exc}")
            turn.done("failed")
        if turn.stop_requested:
            return 0


def _wait_for_init(channel: Channel) -> dict[str, Any] | None:
    while True:
        message = channel.receive()
        if message.get("type") == "init":
            return message
        if message.get("type") == "stop":
            return None


def runtime_main(make_agent: Callable[[dict[str, Any], Channel], Agent], runtime: str, version: str) -> None:
    """``if __name__ == "__main__"`` entry for a runtime module."""
    # The daemon stops us with a ``stop`` message, then SIGTERM; die quietly on either.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    sys.exit(serve(make_agent, runtime=runtime, version=version))
