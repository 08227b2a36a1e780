"""The ``claude`` runtime: the Claude Code CLI, one ``claude -p`` run per turn.

Owns: building each turn's command line (``claude -p --output-format stream-json --verbose``,
plus ``--resume <id>`` from the second turn on, plus the session's ``args``), handing it
the turn's text on stdin, and translating its stream-json records into RFC 0004 messages:

    system/init                  -> log (claude's session id, model, permission mode)
    stream_event text_delta      -> text (only with --include-partial-messages)
    assistant text block         -> text (unless it already streamed as deltas)
    assistant tool_use block     -> tool_start
    user tool_result block       -> tool_end
    result                       -> turn_done with usage and cost; its session id becomes
                                    the resume token, so a restarted runtime resumes too
    result permission_denials    -> log warning per denied tool

Must not: decide permissions. Claude Code applies its own permission mode (choose it with
``args``, e.g. ``["--permission-mode", "acceptEdits"]``); routing its prompts through the
daemon would need its MCP permission-prompt tool, which this adapter does not provide.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

from .. import __version__
from .agent import Agent, Channel, Turn, runtime_main

BASE_ARGS = ("-p", "--output-format", "stream-json", "--verbose")
#: Usage fields copied into ``turn_done`` (all numbers in claude's ``result`` record).
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class StreamJsonTranslator:
    """Turns claude's stream-json lines, one at a time, into messages for ``turn``."""

    def __init__(self, turn: Turn):
        self.turn = turn
        self.session_id: str | None = None
        self.result: dict[str, Any] | None = None
        self._streamed_text = False
        self._handlers = {"system": self.on_system, "stream_event": self.on_stream_event,
                          "assistant": self.on_assistant, "user": self.on_user, "result": self.on_result}

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.turn.log("warning", f"claude printed a line that is not JSON: {line[:200]}")
            return
        if isinstance(record, dict):
            handler = self._handlers.get(record.get("type"))
            if handler is not None:
                handler(record)

    def on_system(self, record: dict[str, Any]) -> None:
        if record.get("subtype") == "init":
            self.session_id = record.get("session_id") or self.session_id
            self.turn.log("info", f"claude session {self.session_id}, model {record.get('model')}, "
                                  f"permission mode {record.get('permissionMode')}")

    def on_stream_event(self, record: dict[str, Any]) -> None:
        event = record.get("event") or {}
        delta = event.get("delta") or {}
        if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
            self.turn.say(str(delta.get("text", "")))
            self._streamed_text = True

    def on_assistant(self, record: dict[str, Any]) -> None:
        for block in content_blocks(record):
            if block.get("type") == "text" and not self._streamed_text:
                self.turn.say(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                self.turn.tool_start(str(block.get("id") or "tool"), str(block.get("name") or "unknown"),
                                     block.get("input", {}))
        self._streamed_text = False  # the whole message arrived: the next one streams afresh

    def on_user(self, record: dict[str, Any]) -> None:
        for block in content_blocks(record):
            if block.get("type") == "tool_result":
                self.turn.tool_end(str(block.get("tool_use_id") or "tool"), not block.get("is_error", False),
                                   flatten(block.get("content")))

    def on_result(self, record: dict[str, Any]) -> None:
        self.result = record
        self.session_id = record.get("session_id") or self.session_id
        for denial in record.get("permission_denials") or []:
            self.turn.log("warning", f"claude's permission mode refused tool {denial.get('tool_name')}")

    def usage(self) -> dict[str, Any]:
        result = self.result or {}
        raw = result.get("usage") or {}
        usage: dict[str, Any] = {name: raw[name] for name in USAGE_FIELDS
                                 if isinstance(raw.get(name), int) and raw[name] >= 0}
        for ours, theirs in (("cost_usd", "total_cost_usd"), ("duration_ms", "duration_ms")):
            if isinstance(result.get(theirs), (int, float)) and result[theirs] >= 0:
                usage[ours] = result[theirs]
        return usage


def content_blocks(record: dict[str, Any]) -> list[dict[str, Any]]:
    content = (record.get("message") or {}).get("content")
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []


def flatten(content: Any) -> str:
    """A tool result's content (a string, or a list of text blocks) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class ClaudeAgent(Agent):
    def __init__(self, init: dict[str, Any], channel: Channel, *, executable: str):
        super().__init__(init, channel)
        self.executable = executable
        self.claude_session: str | None = init.get("resume_token")

    def on_turn(self, turn: Turn) -> None:
        argv = [self.executable, *BASE_ARGS]
        if self.claude_session:
            argv += ["--resume", self.claude_session]
        argv += self.args
        translator = StreamJsonTranslator(turn)
        try:
            code = turn.run_child(argv, self.cwd, turn.text, translator.feed)
        except OSError as exc:
            turn.error(f"cannot run {self.executable}: {exc.strerror or exc}")
            return turn.done("failed")
        self.claude_session = translator.session_id or self.claude_session
        if code is None:
            return turn.done("cancelled", translator.usage(), self.claude_session)
        result = translator.result
        if result is None:
            turn.error(f"claude exited with code {code} without a result record")
            return turn.done("failed", resume_token=self.claude_session)
        if result.get("is_error") or result.get("subtype") != "success":
            turn.error(f"claude reported {result.get('subtype')}: {str(result.get('result', ''))[:2000]}")
            return turn.done("failed", translator.usage(), self.claude_session)
        turn.done("completed", translator.usage(), self.claude_session)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cc_daemon.runtimes.claude")
    parser.add_argument("--executable", required=True, help="path of the claude CLI")
    options = parser.parse_args()
    runtime_main(functools.partial(ClaudeAgent, executable=options.executable), "claude", __version__)


if __name__ == "__main__":
    main()
