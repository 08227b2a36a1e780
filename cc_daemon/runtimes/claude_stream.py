"""Claude Code's stream-json output, translated into RFC 0004 messages of one turn.

Owns: the mapping of claude's output records (checked against Claude Code 2.1.x):

    system/init                  -> log (claude's session id, model, permission mode)
    stream_event text_delta      -> text (with --include-partial-messages)
    assistant text block         -> text (unless it already streamed as deltas)
    assistant tool_use block     -> tool_start
    assistant message "error"    -> error (e.g. authentication_failed: "Not logged in")
    user tool_result block       -> tool_end
    result                       -> the turn's outcome, usage and cost; its session id is
                                    the resume token
    result permission_denials    -> log warning per tool claude's own rules refused

Must not: start processes or answer control requests (``claude`` does both); it only reads.
"""

from __future__ import annotations

from typing import Any

from .agent import Turn

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

    def feed(self, record: dict[str, Any]) -> None:
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
        if record.get("error"):
            self.turn.error(f"claude: {record['error']}: {flatten((record.get('message') or {}).get('content'))}"[:2000])
            return
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
