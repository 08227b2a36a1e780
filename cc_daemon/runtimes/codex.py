"""The ``codex`` runtime: one ``codex app-server`` per session, its approvals answered
through the daemon.

Owns: the JSON-RPC 2.0 conversation with ``codex app-server`` over stdio (checked against
Codex CLI 0.171: ``initialize`` then ``initialized``; ``thread/start``, or ``thread/resume``
with the session's resume token, which is the thread id; ``turn/start`` per turn;
``turn/interrupt`` on cancel) and the mapping of what it says:

    item/agentMessage/delta                   -> text
    item/completed agentMessage (no deltas)   -> text
    item/started commandExecution             -> tool_start "shell" {command, cwd}
    item/started fileChange                   -> tool_start "apply_patch" {changes}
    item/started mcpToolCall                  -> tool_start "<server>.<tool>" {arguments}
    item/completed of those                   -> tool_end (ok: completed, exit code 0)
    item/commandExecution/requestApproval     -> permission_request "shell" {command, cwd}
    item/fileChange/requestApproval           -> permission_request "apply_patch" {changes}
      the answer                              -> {"decision": "accept"} or "decline"
    serverRequest/resolved (still pending)    -> permission_withdrawn
    thread/tokenUsage/updated                 -> the turn's usage
    error                                     -> error (willRetry: log warning)
    turn/completed                            -> turn_done (completed, interrupted ->
                                                 cancelled, failed)

Codex's own approval policy and sandbox (its config, or ``-c key=value`` in ``args``)
decide what it asks about; only what it asks reaches the daemon. A decline carries no
reason to Codex: its protocol has none. Other server requests get a JSON-RPC error.

Must not: decide a permission itself or act after a cancel.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from .. import __version__
from ..errors import METHOD_NOT_FOUND  # JSON-RPC's own code, which codex speaks too
from .agent import Agent, Channel, Turn, runtime_main
from .hosted import Ending, Exchange, HostedProcess

APPROVALS = {"item/commandExecution/requestApproval": "shell", "item/fileChange/requestApproval": "apply_patch"}
TURN_STATUS = {"completed": "completed", "interrupted": "cancelled", "failed": "failed"}


class CodexExchange(Exchange):
    """A JSON-RPC peer of codex for one turn (and for the calls that set up the thread)."""

    def __init__(self, turn: Turn, process: HostedProcess, ids: list[int], thread_id: str | None):
        super().__init__(turn, process)
        self._ids = ids  # the session's counter of our request ids
        self.thread_id = thread_id
        self.codex_turn: str | None = None
        self.usage: dict[str, Any] = {}
        self.status: str | None = None
        self.waiting: dict[int, str] = {}  # our request id -> its method, until answered
        self.replies: dict[str, Any] = {}  # method -> its result, once answered
        self._streamed: set[str] = set()  # agent messages that arrived as deltas
        self._items: dict[str, tuple[str, Any]] = {}  # item id -> (tool, input) of a tool in flight
        #: While opening the thread, the exchange is over once every call was answered.
        self.setting_up = False

    # -- what we send -----------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any]) -> None:
        self._ids[0] += 1
        self.waiting[self._ids[0]] = method
        self.process.send({"jsonrpc": "2.0", "id": self._ids[0], "method": method, "params": params})

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.process.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params else {})})

    def answer(self, theirs: Any, asked: Any, approve: bool, reason: str) -> None:
        self.process.send({"jsonrpc": "2.0", "id": theirs, "result": {"decision": "accept" if approve else "decline"}})

    def interrupt(self) -> None:
        if self.thread_id and self.codex_turn:
            self.call("turn/interrupt", {"threadId": self.thread_id, "turnId": self.codex_turn})
        else:
            self.status = "cancelled"  # nothing started yet: the turn ends here

    # -- what codex says ----------------------------------------------------------------------
    def on_record(self, record: dict[str, Any]) -> bool:
        if "method" in record and "id" in record:
            self.on_request(record["id"], record["method"], record.get("params") or {})
        elif "method" in record:
            self.on_notification(record["method"], record.get("params") or {})
        elif "id" in record:
            self.on_reply(record)
        return self.status is not None or (self.setting_up and not self.waiting)

    def on_reply(self, record: dict[str, Any]) -> None:
        method = self.waiting.pop(record["id"], None) if isinstance(record["id"], int) else None
        if method is None:
            return
        if "error" in record:
            message = (record.get("error") or {}).get("message")
            self.turn.error(f"codex refused {method}: {str(message)[:2000]}")
            if method != "turn/interrupt":
                self.status = "failed"
            return
        result = record.get("result") or {}
        self.replies[method] = result
        if method in ("thread/start", "thread/resume"):
            self.thread_id = str((result.get("thread") or {}).get("id") or "") or None
        elif method == "turn/start":
            self.codex_turn = str((result.get("turn") or {}).get("id") or "") or None

    def on_request(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        tool = APPROVALS.get(method)
        if tool is None:
            self.process.send({"jsonrpc": "2.0", "id": request_id,
                               "error": {"code": METHOD_NOT_FOUND, "message": f"cc_daemon does not serve {method}"}})
            return
        if self.turn.cancelled:
            return self.answer(request_id, None, False, "turn cancelled")
        asked = self._items.get(str(params.get("itemId")), (tool, {}))[1]
        if tool == "shell":
            asked = {"command": params.get("command") or asked.get("command"), "cwd": params.get("cwd")}
        self.ask(request_id, tool, asked, asked, params.get("reason") if isinstance(params.get("reason"), str) else None)

    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "item/agentMessage/delta":
            self._streamed.add(str(params.get("itemId")))
            self.turn.say(str(params.get("delta", "")))
        elif method in ("item/started", "item/completed"):
            self.on_item(method == "item/started", params.get("item") or {})
        elif method == "serverRequest/resolved":
            self.withdraw(params.get("requestId"), "codex resolved the request itself")
        elif method == "thread/tokenUsage/updated":
            last = (params.get("tokenUsage") or {}).get("last") or {}
            self.usage = {ours: last[theirs] for ours, theirs in (
                ("input_tokens", "inputTokens"), ("output_tokens", "outputTokens"),
                ("cache_read_input_tokens", "cachedInputTokens")) if isinstance(last.get(theirs), int)}
        elif method == "error":
            message = f"codex: {str((params.get('error') or {}).get('message'))[:2000]}"
            if params.get("willRetry"):
                self.turn.log("warning", message)  # e.g. reconnecting to the model: said, not fatal
            else:
                self.turn.error(message)
        elif method == "turn/completed":
            turn = params.get("turn") or {}
            if turn.get("status") == "failed" and (turn.get("error") or {}).get("message"):
                self.turn.error(f"codex: {str(turn['error']['message'])[:2000]}")
            self.status = TURN_STATUS.get(turn.get("status"), "failed")

    def on_item(self, started: bool, item: dict[str, Any]) -> None:
        kind, item_id = item.get("type"), str(item.get("id"))
        if kind == "agentMessage":
            if not started and item_id not in self._streamed:
                self.turn.say(str(item.get("text", "")))
            return
        if kind == "commandExecution":
            tool, tool_input = "shell", {"command": item.get("command"), "cwd": item.get("cwd")}
        elif kind == "fileChange":
            tool, tool_input = "apply_patch", {"changes": item.get("changes")}
        elif kind == "mcpToolCall":
            tool, tool_input = f"{item.get('server')}.{item.get('tool')}", {"arguments": item.get("arguments")}
        else:
            return
        if started:
            self._items[item_id] = (tool, tool_input)
            self.turn.tool_start(item_id, tool, tool_input)
            return
        self._items.pop(item_id, None)
        ok = item.get("status") == "completed" and item.get("exitCode") in (None, 0)
        self.turn.tool_end(item_id, ok, str(item.get("aggregatedOutput") or ""))


class CodexAgent(Agent):
    def __init__(self, init: dict[str, Any], channel: Channel, *, executable: str):
        super().__init__(init, channel)
        self.executable = executable
        self.thread_id: str | None = init.get("resume_token")
        self.process: HostedProcess | None = None
        self._ids = [0]

    def on_turn(self, turn: Turn) -> None:
        exchange = self._exchange(turn)
        if exchange is None:
            return turn.done("cancelled" if turn.cancelled else "failed", resume_token=self.thread_id)
        exchange.call("turn/start", {"threadId": self.thread_id, "input": [{"type": "text", "text": turn.text}]})
        ending = exchange.run()
        if ending is not Ending.FINISHED:
            self.process = None
            if ending is Ending.EXITED and exchange.interrupted_at is None:
                turn.error(f"codex exited with code {exchange.exit_code} in the middle of the turn")
        status = "cancelled" if exchange.interrupted_at is not None else \
            exchange.status if ending is Ending.FINISHED else "failed"
        turn.done(status or "failed", exchange.usage, self.thread_id)

    def _exchange(self, turn: Turn) -> CodexExchange | None:
        """A turn's exchange with the session's codex, started and its thread opened when needed."""
        if self.process is not None and self.process.alive():
            return CodexExchange(turn, self.process, self._ids, self.thread_id)
        try:
            self.process = HostedProcess([self.executable, "app-server", *self.args], self.cwd, self.channel)
        except OSError as exc:
            turn.error(f"cannot run {self.executable}: {exc.strerror or exc}")
            return None
        setup = CodexExchange(turn, self.process, self._ids, self.thread_id)
        setup.call("initialize", {"clientInfo": {"name": "cc_daemon", "title": "cc_daemon", "version": __version__}})
        setup.notify("initialized")
        if self.thread_id:
            setup.call("thread/resume", {"threadId": self.thread_id, "cwd": self.cwd})
        else:
            setup.call("thread/start", {"cwd": self.cwd})
        setup.setting_up = True
        if setup.run() is not Ending.FINISHED or setup.thread_id is None:
            if not turn.cancelled:
                turn.error("codex did not open a thread")
            self.close()
            return None
        self.thread_id = setup.thread_id
        return CodexExchange(turn, self.process, self._ids, self.thread_id)

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cc_daemon.runtimes.codex")
    parser.add_argument("--executable", required=True, help="path of the codex CLI")
    options = parser.parse_args()
    runtime_main(functools.partial(CodexAgent, executable=options.executable), "codex", __version__)


if __name__ == "__main__":
    main()
