"""The ``claude`` runtime: one Claude Code process per session, its permission prompts
answered through the daemon.

Owns: starting ``claude -p --input-format stream-json --output-format stream-json --verbose
--include-partial-messages --permission-prompt-tool stdio`` (plus ``--resume <id>`` when the
session has a claude session to continue, plus the session's ``args``), keeping it for the
session's life, writing each turn to it as a user message, and its control protocol:

    control_request can_use_tool      -> permission_request (tool, input, claude's reason);
                                         the answer -> control_response allow (with the
                                         input) or deny (with the frontend's reason; a
                                         timeout says so)
    control_cancel_request            -> permission_withdrawn
    cancel from the daemon            -> control_request interrupt; if no result follows
                                         within INTERRUPT_GRACE_S, the process is stopped
                                         and the next turn resumes it
    other control requests (hooks,    -> control_response error: we register none
    MCP)

Only what claude's own rules would ask a person reaches the daemon: its allow and deny
rules and ``--permission-mode`` (give it in ``args``) still apply first. Output records
are translated by ``claude_stream``.

Must not: decide a permission itself or act after a cancel; write anything but protocol
messages to stdout (claude's stderr goes to ours, which the daemon keeps per session).
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import subprocess
import threading
import time
from typing import Any

from .. import __version__
from .agent import Agent, Channel, Turn, runtime_main
from .claude_stream import StreamJsonTranslator, parse_line

BASE_ARGS = ("-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
             "--include-partial-messages", "--permission-prompt-tool", "stdio")
#: How long an interrupted turn may take to end on its own before its process is stopped:
#: well inside the daemon's cancel grace (5 s by default), after which the daemon kills the
#: whole runtime; stopping only claude keeps the runtime, and the next turn resumes.
INTERRUPT_GRACE_S = 2.0
#: How long a stopped claude gets between closing its stdin, SIGTERM and SIGKILL.
STOP_GRACE_S = 2.0
#: The types of the messages the process's reader posts to the runtime's inbox.
LINE, EXITED = "claude.line", "claude.exited"


class ClaudeProcess:
    """One running ``claude``: records to its stdin, its stdout lines to the channel's inbox."""

    def __init__(self, argv: list[str], cwd: str, channel: Channel):
        self.child = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._write_lock = threading.Lock()
        self._requests = 0
        threading.Thread(target=self._pump, args=(channel,), name="claude-reader", daemon=True).start()

    def _pump(self, channel: Channel) -> None:
        with self.child.stdout:
            for raw in self.child.stdout:
                channel.post({"type": LINE, "pid": self.child.pid, "line": raw.decode("utf-8", "replace")})
        channel.post({"type": EXITED, "pid": self.child.pid, "code": self.child.wait()})

    def send(self, record: dict[str, Any]) -> None:
        """Write one record; a dead process is noticed by the reader, not here."""
        with self._write_lock:
            try:
                self.child.stdin.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                self.child.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def request(self, subtype: str, **fields: Any) -> None:
        """A control request of ours (initialize, interrupt); claude's answer is only logged."""
        self._requests += 1
        self.send({"type": "control_request", "request_id": f"ccd-{self._requests}",
                   "request": {"subtype": subtype, **fields}})

    def respond(self, request_id: str, response: dict[str, Any] | None = None, error: str | None = None) -> None:
        body = {"subtype": "error", "request_id": request_id, "error": error} if error is not None else \
            {"subtype": "success", "request_id": request_id, "response": response or {}}
        self.send({"type": "control_response", "response": body})

    def alive(self) -> bool:
        return self.child.poll() is None

    def stop(self) -> None:
        """End it: stdin closed (claude exits on its own), then SIGTERM, then SIGKILL."""
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


def deny_message(reason: str) -> str:
    """What claude (and so the model) is told when a frontend, or nobody, said no."""
    if reason == "timeout":
        return "Nobody answered this permission request in time, so it was denied."
    return f"Denied through cc_daemon: {reason}" if reason else "Denied through cc_daemon."


def rationale_of(request: dict[str, Any]) -> str | None:
    """Claude's own words on why it asks, from the fields its versions send."""
    parts = [str(request[key]) for key in ("title", "description", "decision_reason", "blocked_path")
             if isinstance(request.get(key), str) and request[key]]
    return "; ".join(parts)[:10000] or None


class TurnInFlight:
    """One turn's exchange with claude: its pending questions, the interrupt, the outcome."""

    def __init__(self, turn: Turn, process: ClaudeProcess):
        self.turn = turn
        self.process = process
        self.translator = StreamJsonTranslator(turn)
        #: Our request id (given to the daemon) -> (claude's request id, the tool's input).
        self.questions: dict[str, tuple[str, Any]] = {}
        self.interrupted_at: float | None = None

    def on_record(self, record: dict[str, Any]) -> bool:
        """Handle one of claude's records; True once the turn's result arrived."""
        kind = record.get("type")
        if kind == "control_request":
            self.on_control_request(record)
        elif kind == "control_cancel_request":
            self.on_cancel_request(str(record.get("request_id")))
        elif kind == "control_response":
            response = record.get("response") or {}
            if response.get("subtype") == "error":
                self.turn.log("warning", f"claude refused control request {response.get('request_id')}: "
                                         f"{str(response.get('error'))[:500]}")
        else:
            self.translator.feed(record)
            return kind == "result"
        return False

    def on_control_request(self, record: dict[str, Any]) -> None:
        claude_id = str(record.get("request_id"))
        request = record.get("request") or {}
        if request.get("subtype") != "can_use_tool":
            self.process.respond(claude_id, error=f"cc_daemon does not serve {request.get('subtype')!r} requests")
            return
        if self.turn.cancelled:
            self.process.respond(claude_id, {"behavior": "deny", "message": "The turn was cancelled."})
            return
        ours = f"claude-{len(self.questions) + 1}-{claude_id[:64]}"
        tool_input = request.get("input") if isinstance(request.get("input"), dict) else {}
        self.questions[ours] = (claude_id, tool_input)
        self.turn.request_permission(ours, str(request.get("tool_name") or "unknown"), tool_input,
                                     rationale_of(request))

    def on_cancel_request(self, claude_id: str) -> None:
        for ours, (asked, _) in list(self.questions.items()):
            if asked == claude_id:
                del self.questions[ours]
                self.turn.withdraw_permission(ours, "claude withdrew the question")

    def pass_answers(self) -> None:
        """Hand every answer the daemon sent on to claude."""
        for ours, (claude_id, tool_input) in list(self.questions.items()):
            answer = self.turn.take_answer(ours)
            if answer is None:
                continue
            del self.questions[ours]
            approve, reason = answer
            self.process.respond(claude_id, {"behavior": "allow", "updatedInput": tool_input} if approve
                                 else {"behavior": "deny", "message": deny_message(reason)})

    def interrupt_if_cancelled(self) -> None:
        if self.turn.cancelled and self.interrupted_at is None:
            self.interrupted_at = time.monotonic()
            self.process.request("interrupt")

    def interrupt_overdue(self) -> bool:
        return self.interrupted_at is not None and time.monotonic() - self.interrupted_at > INTERRUPT_GRACE_S


class ClaudeAgent(Agent):
    def __init__(self, init: dict[str, Any], channel: Channel, *, executable: str):
        super().__init__(init, channel)
        self.executable = executable
        self.claude_session: str | None = init.get("resume_token")
        self.process: ClaudeProcess | None = None

    def on_turn(self, turn: Turn) -> None:
        process = self._process(turn)
        if process is None:
            return turn.done("failed", resume_token=self.claude_session)
        flight = TurnInFlight(turn, process)
        process.send({"type": "user", "session_id": "", "parent_tool_use_id": None,
                      "message": {"role": "user", "content": turn.text}})
        while True:
            flight.interrupt_if_cancelled()
            self.claude_session = flight.translator.session_id or self.claude_session  # from init on
            if flight.interrupt_overdue():
                turn.log("warning", f"claude did not end the turn within {INTERRUPT_GRACE_S:g} s of the "
                                    "interrupt; stopping it (the next turn resumes the session)")
                self._end_process()
                return turn.done("cancelled", flight.translator.usage(), self.claude_session)
            message = turn.poll(0.1 if flight.interrupted_at is not None else None)
            flight.pass_answers()
            if message is None or message.get("pid") != process.child.pid:
                continue  # the daemon's (handled by poll), or from a process that is gone
            if message["type"] == EXITED:
                self.process = None
                if flight.interrupted_at is None:
                    turn.error(f"claude exited with code {message['code']} in the middle of the turn")
                return turn.done("cancelled" if flight.interrupted_at else "failed",
                                 flight.translator.usage(), self.claude_session)
            record = parse_line(message["line"])
            if record is None:
                if message["line"].strip():
                    turn.log("warning", f"claude printed a line that is not JSON: {message['line'][:200]}")
                continue
            if flight.on_record(record):
                return self._finish(flight)

    def _finish(self, flight: TurnInFlight) -> None:
        turn, translator = flight.turn, flight.translator
        self.claude_session = translator.session_id or self.claude_session  # the result's, if it differs
        result = translator.result or {}
        if flight.interrupted_at is not None:
            status = "cancelled"
        elif result.get("is_error") or result.get("subtype") != "success":
            turn.error(f"claude reported {result.get('subtype')}: {str(result.get('result', ''))[:2000]}")
            status = "failed"
        else:
            status = "completed"
        turn.done(status, translator.usage(), self.claude_session)

    def _process(self, turn: Turn) -> ClaudeProcess | None:
        """The session's claude, started (or started again, resuming) when needed."""
        if self.process is not None and self.process.alive():
            return self.process
        argv = [self.executable, *BASE_ARGS]
        if self.claude_session:
            argv += ["--resume", self.claude_session]
        argv += self.args
        try:
            self.process = ClaudeProcess(argv, self.cwd, self.channel)
        except OSError as exc:
            turn.error(f"cannot run {self.executable}: {exc.strerror or exc}")
            return None
        self.process.request("initialize", hooks=None)
        return self.process

    def _end_process(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def close(self) -> None:
        self._end_process()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cc_daemon.runtimes.claude")
    parser.add_argument("--executable", required=True, help="path of the claude CLI")
    options = parser.parse_args()
    runtime_main(functools.partial(ClaudeAgent, executable=options.executable), "claude", __version__)


if __name__ == "__main__":
    main()
