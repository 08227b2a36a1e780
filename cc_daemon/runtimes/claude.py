"""The ``claude`` runtime: one Claude Code process per session, its permission prompts
answered through the daemon.

Owns: starting ``claude -p --input-format stream-json --output-format stream-json --verbose
--include-partial-messages --permission-prompt-tool stdio`` (plus ``--resume <id>`` when the
session has a claude session to continue, plus the session's ``args``), writing each turn
to it as a user message, and its control protocol (checked against Claude Code 2.1.x):

    control_request can_use_tool      -> permission_request (tool, input, claude's reason);
                                         the answer -> control_response allow (with the
                                         input) or deny (with the frontend's reason; a
                                         timeout says so)
    control_cancel_request            -> permission_withdrawn
    cancel from the daemon            -> control_request interrupt (``hosted`` stops the
                                         process if the turn does not end soon after)
    other control requests (hooks,    -> control_response error: we register none
    MCP)

Only what claude's own rules would ask a person reaches the daemon: its allow and deny
rules and ``--permission-mode`` (give it in ``args``) still apply first. Output records
are translated by ``claude_stream``; the process and the turn loop are ``hosted``'s.

Must not: decide a permission itself or act after a cancel.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from .. import __version__
from .agent import Agent, Channel, Turn, runtime_main
from .claude_stream import StreamJsonTranslator
from .hosted import Ending, Exchange, HostedProcess

BASE_ARGS = ("-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
             "--include-partial-messages", "--permission-prompt-tool", "stdio")


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


class ClaudeExchange(Exchange):
    """One turn with claude: its records translated, its control protocol spoken."""

    def __init__(self, turn: Turn, process: HostedProcess, requests: list[int]):
        super().__init__(turn, process)
        self.translator = StreamJsonTranslator(turn)
        self._requests = requests  # the session's counter of our own control requests

    def control(self, subtype: str, **fields: Any) -> None:
        """A control request of ours; claude's answer is only looked at when it is an error."""
        self._requests[0] += 1
        self.process.send({"type": "control_request", "request_id": f"ccd-{self._requests[0]}",
                           "request": {"subtype": subtype, **fields}})

    def respond(self, request_id: str, response: dict[str, Any] | None = None, error: str | None = None) -> None:
        body = {"subtype": "error", "request_id": request_id, "error": error} if error is not None else \
            {"subtype": "success", "request_id": request_id, "response": response or {}}
        self.process.send({"type": "control_response", "response": body})

    def on_record(self, record: dict[str, Any]) -> bool:
        kind = record.get("type")
        if kind == "control_request":
            self.on_control_request(str(record.get("request_id")), record.get("request") or {})
        elif kind == "control_cancel_request":
            self.withdraw(str(record.get("request_id")), "claude withdrew the question")
        elif kind == "control_response":
            response = record.get("response") or {}
            if response.get("subtype") == "error":
                self.turn.log("warning", f"claude refused control request {response.get('request_id')}: "
                                         f"{str(response.get('error'))[:500]}")
        else:
            self.translator.feed(record)
            return kind == "result"
        return False

    def on_control_request(self, request_id: str, request: dict[str, Any]) -> None:
        if request.get("subtype") != "can_use_tool":
            return self.respond(request_id, error=f"cc_daemon does not serve {request.get('subtype')!r} requests")
        if self.turn.cancelled:
            return self.respond(request_id, {"behavior": "deny", "message": "The turn was cancelled."})
        tool_input = request.get("input") if isinstance(request.get("input"), dict) else {}
        self.ask(request_id, str(request.get("tool_name") or "unknown"), tool_input, tool_input,
                 rationale_of(request))

    def answer(self, theirs: Any, asked: Any, approve: bool, reason: str) -> None:
        self.respond(theirs, {"behavior": "allow", "updatedInput": asked} if approve
                     else {"behavior": "deny", "message": deny_message(reason)})

    def interrupt(self) -> None:
        self.control("interrupt")


class ClaudeAgent(Agent):
    def __init__(self, init: dict[str, Any], channel: Channel, *, executable: str):
        super().__init__(init, channel)
        self.executable = executable
        self.claude_session: str | None = init.get("resume_token")
        self.process: HostedProcess | None = None
        self._requests = [0]

    def on_turn(self, turn: Turn) -> None:
        process = self._process(turn)
        if process is None:
            return turn.done("failed", resume_token=self.claude_session)
        exchange = ClaudeExchange(turn, process, self._requests)
        process.send({"type": "user", "session_id": "", "parent_tool_use_id": None,
                      "message": {"role": "user", "content": turn.text}})
        ending = exchange.run()
        translator = exchange.translator
        self.claude_session = translator.session_id or self.claude_session
        if ending is not Ending.FINISHED:
            self.process = None  # stopped or dead: the next turn starts it again, resuming
            if ending is Ending.EXITED and exchange.interrupted_at is None:
                turn.error(f"claude exited with code {exchange.exit_code} in the middle of the turn")
        result = translator.result or {}
        if exchange.interrupted_at is not None:
            status = "cancelled"
        elif ending is not Ending.FINISHED:
            status = "failed"
        elif result.get("is_error") or result.get("subtype") != "success":
            turn.error(f"claude reported {result.get('subtype')}: {str(result.get('result', ''))[:2000]}")
            status = "failed"
        else:
            status = "completed"
        turn.done(status, translator.usage(), self.claude_session)

    def _process(self, turn: Turn) -> HostedProcess | None:
        """The session's claude, started (or started again, resuming) when needed."""
        if self.process is not None and self.process.alive():
            return self.process
        argv = [self.executable, *BASE_ARGS]
        if self.claude_session:
            argv += ["--resume", self.claude_session]
        argv += self.args
        try:
            self.process = HostedProcess(argv, self.cwd, self.channel)
        except OSError as exc:
            turn.error(f"cannot run {self.executable}: {exc.strerror or exc}")
            return None
        ClaudeExchange(turn, self.process, self._requests).control("initialize", hooks=None)
        return self.process

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cc_daemon.runtimes.claude")
    parser.add_argument("--executable", required=True, help="path of the claude CLI")
    options = parser.parse_args()
    runtime_main(functools.partial(ClaudeAgent, executable=options.executable), "claude", __version__)


if __name__ == "__main__":
    main()
