"""``cheetahclaws events``: follow the daemon's event stream in a terminal or a pipe.

Owns: the verb, and how one event reads as one line of text (``describe``), which
``session attach`` and ``session logs`` reuse; ``Style`` for colour on terminals only.
Must not: reconnect or track ids itself: ``cc_daemon.client.EventStream`` does that.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from .common import add_client, client_verb, fail, non_negative_int

EXAMPLES = """examples:
  cheetahclaws events                          # from now on, until Ctrl-C
  cheetahclaws events --since 0 --type permission_request --type permission_answered
  cheetahclaws events --session ses_0123456789abcdef --json | jq .data
  cheetahclaws events --since 120 --limit 10   # ten events after id 120, then exit

The stream survives daemon restarts: it reconnects with Last-Event-ID and prints every
event once, in id order; a `gap` line says exactly which ids the daemon no longer has.
Reconnection notices go to stderr.
exit codes: 0 done (--limit reached); 1 the daemon refused; 2 bad usage; 3 no daemon
answers at start; 130 interrupted (Ctrl-C)."""


class Style:
    """ANSI colours, or plain text when the output is not a terminal (or NO_COLOR is set)."""

    CODES = {"dim": "2", "bold": "1", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}

    def __init__(self, stream: TextIO):
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR")

    def __call__(self, name: str, text: str) -> str:
        return f"\033[{self.CODES[name]}m{text}\033[0m" if self.enabled else text


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def one_line(text: str, limit: int = 120) -> str:
    flat = text.replace("\n", "\u23ce")
    return flat if len(flat) <= limit else flat[:limit - 1] + "\u2026"


def describe(event: dict[str, Any]) -> str:
    """What an event says, in a few words (its type, id and time are printed around it)."""
    data = event.get("data") or {}
    kind = event.get("type")
    if kind == "gap":
        return f"events {data.get('missed_from')}..{data.get('missed_to')} are gone ({data.get('reason')})"
    if kind == "shutdown":
        return f"the daemon is shutting down ({data.get('reason')})"
    if kind == "text_chunk":
        return compact(data.get("text", ""))
    if kind == "tool_start":
        return f"{data.get('tool')} {one_line(compact(data.get('input')))}"
    if kind == "tool_end":
        return f"{'ok' if data.get('ok') else 'failed'} {one_line(str(data.get('output', '')), 80)}".rstrip()
    if kind == "permission_request":
        return (f"{data.get('request_id')} {data.get('tool')} {one_line(compact(data.get('input')))}"
                f" expires {clock(data.get('expires_at'))}")
    if kind == "permission_answered":
        answer = data.get("answer") or {}
        verdict = "approved" if answer.get("approve") else "denied"
        return f"{data.get('request_id')} {verdict}" + (f" ({answer['reason']})" if answer.get("reason") else "")
    if kind == "permission_timeout":
        return f"{data.get('request_id')} timed out: {data.get('auto_answer')}"
    if kind in ("turn_queued", "turn_started"):
        text = f" {compact(one_line(data['text'], 80))}" if "text" in data else ""
        return f"{data.get('turn_id')}{text}"
    if kind == "turn_done":
        usage = data.get("usage") or {}
        tokens = " ".join(f"{k}={v}" for k, v in usage.items())
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"{data.get('turn_id')} {data.get('status')}{reason} {tokens}".rstrip()
    if kind == "session_state":
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"{data.get('previous')} -> {data.get('state')}{reason}"
    return one_line(compact(data), 200)


def clock(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def event_line(event: dict[str, Any], style: Style) -> str:
    """``id  time  type  session  summary [by kind/ref]``: one event, one line."""
    originator = event.get("originator") or {}
    by = ""
    if originator:
        mine = " (me)" if "client_id" in originator else ""
        by = style("dim", f"  by {originator.get('kind') or '?'}/{originator.get('client_ref')}{mine}")
    kind = event.get("type", "?")
    colour = "red" if kind in ("gap", "runtime_error", "runner_crashed", "runtime_protocol_error") else (
        "yellow" if kind.startswith("permission") else "cyan")
    event_id = event.get("id")
    shown_id = f"{event_id if event_id is not None else '-':>7}"
    return (f"{style('dim', shown_id)} {clock(event.get('ts'))} "
            f"{style(colour, f'{kind:<22}')} {event.get('session_id') or '-':<20} {describe(event)}{by}")


def add_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("events", help="follow the event stream (survives daemon restarts)",
                              description="Print the daemon's events as they happen, one line each.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--since", type=non_negative_int, metavar="N",
                        help="first replay every retained event after id N (default: from now on)")
    parser.add_argument("--type", action="append", default=[], metavar="T", dest="types",
                        help="only events of type T (repeatable, or comma-separated)")
    parser.add_argument("--session", metavar="S", help="only the events of session S")
    parser.add_argument("--json", action="store_true", help="print each event as one line of JSON")
    parser.add_argument("--limit", type=non_negative_int, metavar="N", help="exit after N events")
    add_client(parser)
    parser.set_defaults(run=run)


@client_verb
def run(args: argparse.Namespace) -> int:
    from .common import connect

    types = [t for value in args.types for t in value.split(",") if t]
    if args.limit == 0:
        fail("--limit must be at least 1", 2)
    style = Style(sys.stdout)
    with connect(args) as client:
        stream = client.events(args.since, types=types, session=args.session, on_reconnect=notice)
        with stream:
            for count, event in enumerate(stream, start=1):
                print(compact(event) if args.json else event_line(event, style), flush=True)
                if args.limit and count >= args.limit:
                    break
    return 0


def notice(message: str) -> None:
    sys.stderr.write(f"cheetahclaws: {message}\n")
    sys.stderr.flush()
