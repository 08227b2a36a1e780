"""``cheetahclaws session new|send|ls|show|attach|cancel|close|logs``: drive agent sessions
from a terminal.

Owns: the session verbs; ``Transcript``, how a session's events read as a conversation
(agent text as it streams, one line per tool step, permission requests, turn ends);
``Attachment``, the live view that sends typed lines as turns and answers the permission
prompts this client originated; ``ResumePoints``, where ``attach`` left each session.
Must not: decide who may answer a permission request (the daemon does: we only avoid
offering prompts it would refuse), or reconnect a stream itself (``EventStream`` does).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TextIO

from .common import EXIT_REFUSED, add_client, client_verb, fail, non_negative_int
from .events_verb import Style, compact, describe, event_line, notice, one_line

if TYPE_CHECKING:  # the CLI imports the daemon's modules only in the verbs that run
    from cc_daemon.storage import DataDir

EXAMPLES = """examples:
  S=$(cheetahclaws session new demo --name try-it)      # prints the new session's id
  cheetahclaws session send $S 'write hello.txt hi' --wait
  cheetahclaws session attach $S                        # live view; y/n at prompts, Ctrl-C detaches
  cheetahclaws session ls
  cheetahclaws session show $S
  cheetahclaws session logs $S
  cheetahclaws session cancel $S
  cheetahclaws session close $S

runtimes: demo (a scripted agent: `run <cmd>` and `write <file> <text>` ask permission),
command (runs the program given with --arg once per turn), claude (Claude Code CLI);
`cheetahclaws rpc session.runtimes` says which are available.
exit codes (each action's --help says more): 0 done; 1 the daemon refused; 2 bad usage;
3 no daemon answers."""

REFUSED = "the daemon refused (error code, message and data on stderr)"
EXIT_CODES = """exit codes: 0 {ok}; 1 {failed};
2 bad usage; 3 no daemon answers."""

SESSION_HELP = "the session's id (`cheetahclaws session ls` lists them)"
#: The states a session never leaves (the contract's ended states).
ENDED_STATES = frozenset({"parked", "stopped", "failed"})
#: Ended states no ``session_closed`` follows (``stopped`` is always followed by one: wait for it).
UNANNOUNCED_ENDS = ENDED_STATES - {"stopped"}
#: Events that settle a permission request one way or another.
SETTLED = frozenset({"permission_answered", "permission_timeout", "permission_cancelled"})
#: What a session id may look like before it names a file of ours (ses_<16 hex> in practice).
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


# -- parser -----------------------------------------------------------------------------
def add_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("session", help="create, drive and watch agent sessions (new, send, attach, ...)",
                              description="Create agent sessions, send them turns, watch and steer them.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    new = action(actions, "new", run_new, "start a session; prints its id",
                 "cheetahclaws session new demo --cwd ~/project --name demo1\n"
                 "  cheetahclaws session new command --arg=/bin/cat --name echo-back\n"
                 "  cheetahclaws session new demo --arg=--chunk-delay --arg=0.05   # values starting with - need =")
    new.add_argument("runtime", metavar="RUNTIME", help="demo, command, claude, or a runtime from a plugin")
    new.add_argument("--cwd", metavar="DIR", help="the agent's directory (default: the current one)")
    new.add_argument("--name", help="a name to recognise the session by")
    new.add_argument("--mode", choices=("interactive", "unattended"),
                     help="interactive (default): permission requests go to the turn's sender; "
                          "unattended: to --approve-via")
    new.add_argument("--approve-via", metavar="WHO",
                     help="unattended only: deny (default), allow, or the client kind that answers")
    new.add_argument("--arg", action="append", dest="runtime_args", metavar="ARG",
                     help="an argument for the runtime (repeatable)")
    new.add_argument("--env", action="append", type=env_pair, metavar="NAME=VALUE",
                     help="an environment variable for the runtime (repeatable)")
    new.add_argument("--restart", choices=("never", "on-crash", "always"),
                     help="restart policy when the runtime exits (default on-crash)")
    new.add_argument("--max-turn-s", type=float, metavar="S", help="cancel a turn that runs longer than S seconds")
    new.add_argument("--json", action="store_true", help="print the whole new session as JSON")

    send = action(actions, "send", run_send, "start a turn (with --wait: follow it to its end)",
                  "cheetahclaws session send ses_0123456789abcdef 'run ls -la' --wait",
                  failed=REFUSED + ", or with --wait the turn ended other than completed")
    send.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    send.add_argument("text", nargs="+", metavar="TEXT", help="the message (words are joined; - reads stdin)")
    send.add_argument("--wait", action="store_true",
                      help="print the session's output until this turn is done")
    send.add_argument("--message-id", metavar="ID",
                      help="idempotency key: sending the same id again never starts a second turn")

    ls = action(actions, "ls", run_ls, "list sessions: id, name, state, runtime, cwd, age, last activity",
                "cheetahclaws session ls --json | jq '.[].state'")
    ls.add_argument("--json", action="store_true", help="print the sessions as JSON")

    show = action(actions, "show", run_show, "one session in detail, with the tail of its runtime's stderr",
                  "cheetahclaws session show ses_0123456789abcdef")
    show.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    show.add_argument("--json", action="store_true", help="print session.get's result as JSON")

    attach = action(actions, "attach", run_attach,
                    "live view: agent text, tools, y/n permission prompts; typed lines are sent as turns",
                    "cheetahclaws session attach ses_0123456789abcdef\n\n"
                    "Type a line and Enter to send it as a turn. At a permission prompt (only for requests\n"
                    "this client raised; others' are shown read-only) answer y or n (n <reason> says why).\n"
                    "Ctrl-C or Ctrl-D detaches and leaves the session running; attaching again resumes\n"
                    "after the last event shown (kept in <data-dir>/clients/attach/).",
                    ok="detached (Ctrl-C, Ctrl-D) or the session ended")
    attach.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    attach.add_argument("--since", type=non_negative_int, metavar="N",
                        help="start after event N (default: where the last attach left off, "
                             "or the session's beginning)")
    attach.add_argument("--no-input", action="store_true",
                        help="watch only: do not read the terminal (and offer no prompts)")
    attach.add_argument("--verbose", action="store_true", help="also show runtime logs and process starts")

    cancel = action(actions, "cancel", run_cancel, "cancel the running turn (or a queued one); the session stays",
                    "cheetahclaws session cancel ses_0123456789abcdef")
    cancel.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    cancel.add_argument("--turn", metavar="TURN", help="cancel this queued turn instead of the running one")

    close = action(actions, "close", run_close, "stop the session's runtime; its history stays readable",
                   "cheetahclaws session close ses_0123456789abcdef")
    close.add_argument("session", metavar="SESSION", help=SESSION_HELP)

    logs = action(actions, "logs", run_logs, "the session's stored events, one line each",
                  "cheetahclaws session logs ses_0123456789abcdef --since 40")
    logs.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    logs.add_argument("--since", type=non_negative_int, default=0, metavar="N", help="only events after id N")
    logs.add_argument("--json", action="store_true", help="print each event as one line of JSON")


def action(actions: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int | None],
           summary: str, example: str, ok: str = "done", failed: str = REFUSED) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:] + ".",
                                epilog=f"example:\n  {example}\n\n{EXIT_CODES.format(ok=ok, failed=failed)}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client(parser)
    parser.set_defaults(run=client_verb(run))
    return parser


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


# -- new, send, cancel, close -------------------------------------------------------------
def run_new(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        session = client.sessions.create(
            args.runtime, Path(args.cwd or ".").expanduser(), name=args.name, mode=args.mode,
            approve_via=args.approve_via, env=dict(args.env) if args.env else None, args=args.runtime_args,
            restart=args.restart, max_turn_s=args.max_turn_s)
    print(json.dumps(session, indent=2, ensure_ascii=False) if args.json else session["session_id"])
    return 0


def run_send(args: argparse.Namespace) -> int:
    from .common import connect

    text = sys.stdin.read() if args.text == ["-"] else " ".join(args.text)
    if not text.strip():
        fail("the message is empty", 2)
    with connect(args) as client:
        if not args.wait:
            print(client.sessions.send(args.session, text, message_id=args.message_id)["turn_id"])
            return 0
        transcript = Transcript(sys.stdout, client)
        done: dict[str, Any] = {}
        for event in client.sessions.turn(args.session, text, message_id=args.message_id, read_timeout=None):
            transcript.show(event)
            if event["type"] == "permission_request" and client.is_originator(event):
                notice(f"answer it with: cheetahclaws session attach {args.session}")
            done = event
        transcript.end_line()
    return 0 if (done.get("data") or {}).get("status") == "completed" else EXIT_REFUSED


def run_cancel(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        result = client.sessions.cancel(args.session, args.turn)
    print(f"cancelled {result['turn_id']}" if result["cancelled"] else "no turn to cancel")
    return 0


def run_close(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        session = client.sessions.close(args.session)
    print(f"closed {session['session_id']} ({session['state']})")
    return 0


# -- ls, show, logs ---------------------------------------------------------------------
def run_ls(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        sessions = client.sessions.list()
        activity = last_activity(client, sessions)
    for session in sessions:
        session["last_activity_at"] = activity.get(session["session_id"])
    if args.json:
        print(json.dumps(sessions, indent=2, ensure_ascii=False))
        return 0
    if not sessions:
        print("no sessions")
        return 0
    now, style = time.time(), Style(sys.stdout)
    rows = [[s["session_id"], s.get("name") or "-", s["state"], s["runtime"], home_relative(s["cwd"]),
             duration(now - s["created_at"]),
             f"{duration(now - s['last_activity_at'])} ago" if s["last_activity_at"] else "-"] for s in sessions]
    print_table(["ID", "NAME", "STATE", "RUNTIME", "CWD", "AGE", "LAST ACTIVITY"], rows,
                lambda column, text: style(state_colour(text), text) if column == 2 else text)
    return 0


def last_activity(client: Any, sessions: list[dict[str, Any]]) -> dict[str, float]:
    """Each session's newest event time, in one batch of ``events.query`` calls."""
    if not sessions:
        return {}
    pages = client.batch([("events.query", {"session_id": s["session_id"], "order": "desc", "limit": 1})
                          for s in sessions])
    newest: dict[str, float] = {}
    for session, page in zip(sessions, pages):
        if isinstance(page, dict) and page.get("events"):
            newest[session["session_id"]] = page["events"][0]["ts"]
    return newest


def print_table(headers: list[str], rows: list[list[str]], decorate: Callable[[int, str], str]) -> None:
    """Left-aligned columns; ``decorate`` may colour a cell after it is padded."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        print("  ".join(decorate(i, cell.ljust(w)) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())


def state_colour(state: str) -> str:
    state = state.strip()
    return "green" if state == "idle" else "red" if state in ENDED_STATES else "yellow" if state == (
        "waiting_permission") else "cyan"


def duration(seconds: float) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``: coarse, for a table."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def home_relative(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + os.sep) else path


def run_show(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        session = client.sessions.get(args.session)
    if args.json:
        print(json.dumps(session, indent=2, ensure_ascii=False))
        return 0
    for label, value in session_details(session, time.time()):
        print(f"{label:<12} {value}")
    tail = session.get("stderr_tail") or []
    print(f"{'stderr':<12} {len(tail)} recent line(s)" + (f", full log: {session['runner']['stderr_log']}"
                                                         if (session.get("runner") or {}).get("stderr_log") else ""))
    for line in tail:
        print(f"  | {line}")
    return 0


def session_details(session: dict[str, Any], now: float) -> Iterable[tuple[str, str]]:
    yield "session", session["session_id"] + (f"  ({session['name']})" if session.get("name") else "")
    yield "state", session["state"] + (f"  ({session['closed_reason']})" if session.get("closed_reason") else "")
    yield "runtime", " ".join(filter(None, (session["runtime"], session.get("runtime_version"))))
    yield "cwd", session["cwd"]
    mode = session["mode"]
    yield "mode", mode + (f", approved via {session['approve_via']}" if session.get("approve_via") else "")
    owner = session.get("owner") or {}
    yield "owner", f"{owner.get('kind')}/{owner.get('client_ref')}"
    yield "created", f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(session['created_at']))}" \
                     f"  ({duration(now - session['created_at'])} ago)"
    current = session.get("current_turn")
    yield "turns", f"{session.get('turns', 0)} accepted, {session.get('queued', 0)} queued" + (
        f", running {current['turn_id']}" if current else "")
    if session.get("usage"):
        yield "usage", " ".join(f"{key}={value}" for key, value in session["usage"].items())
    if session.get("args"):
        yield "args", " ".join(session["args"])
    if session.get("env_names"):
        yield "env", " ".join(session["env_names"])
    if session.get("pending_permissions"):
        yield "permissions", " ".join(session["pending_permissions"]) + " pending"
    runner = session.get("runner")
    if runner:
        text = f"{runner['state']}, pid {runner['pid'] or '-'}, {runner['spawns']} spawn(s), {runner['restarts']} restart(s)"
        if runner.get("restart_in_s") is not None:
            text += f", restarting in {runner['restart_in_s']} s"
        yield "runner", text
        if runner.get("last_exit"):
            yield "last exit", exit_summary(runner["last_exit"])


def exit_summary(last_exit: dict[str, Any]) -> str:
    if last_exit.get("spawn_error"):
        return f"could not start: {last_exit['spawn_error']}"
    how = (f"killed by {last_exit['signal_name']}" if last_exit.get("signal") is not None
           else f"exit code {last_exit.get('exit_code')}")
    return f"{how} after {last_exit.get('ran_s')} s" + (" (asked to stop)" if last_exit.get("requested") else "")


def run_logs(args: argparse.Namespace) -> int:
    from .common import connect

    style = Style(sys.stdout)
    with connect(args) as client:
        for event in client.sessions.iter_history(args.session, since=args.since):
            print(compact(event) if args.json else event_line(event, style), flush=True)
    return 0


# -- the transcript -----------------------------------------------------------------------
class Transcript:
    """A session's events as a person reads them: the agent's text as it streams, then one
    line per tool step, permission request, outcome and turn end.

    ``last_id`` is the id of the last event shown (hidden ones count: they were seen).
    """

    def __init__(self, out: TextIO, client: Any, *, verbose: bool = False):
        self.out = out
        self.style = Style(out)
        self.client = client
        self.verbose = verbose
        self.last_id: int | None = None
        #: Turns typed in this terminal: the terminal echoed them already.
        self.typed_turns: set[str] = set()
        self._mid_line = False  # agent text was written without its end of line yet

    def show(self, event: dict[str, Any], *, prompt: bool = False) -> None:
        """Render ``event``; ``prompt``: it is a permission request this terminal answers."""
        if event.get("type") == "text_chunk":
            self.text((event.get("data") or {}).get("text", ""))
        else:
            line = self.describe(event, prompt)
            if line is not None:
                self.line(line)
        if event.get("id") is not None:
            self.last_id = event["id"]

    def describe(self, event: dict[str, Any], prompt: bool) -> str | None:
        """The line for one event, or None for the ones not worth a line."""
        kind, data, style = event["type"], event.get("data") or {}, self.style
        if kind == "turn_queued":
            if data.get("turn_id") in self.typed_turns:
                return None
            return style("bold", f"> {self.who(event)}{data.get('text', '')}")
        if kind == "tool_start":
            return style("cyan", f"[{data.get('tool')}] {one_line(compact(data.get('input')))}")
        if kind == "tool_end":
            ok = data.get("ok")
            return style("green" if ok else "red", f"[{'done' if ok else 'failed'}] "
                                                   f"{one_line(str(data.get('output', '')).strip(), 100)}")
        if kind == "permission_request":
            return self.permission_line(event, prompt)
        if kind in SETTLED:
            return style("yellow", f"  {data.get('request_id')}: {settled_outcome(kind, data)}")
        if kind == "turn_done":
            return style("dim", f"[turn {describe(event)}]")
        if kind == "session_state":
            return self.state_line(data)
        if kind == "runtime_error":
            return style("red", f"error: {data.get('message')}")
        if kind == "session_created":
            return style("dim", f"[session created: {data.get('runtime')} in {data.get('cwd')}]")
        if kind == "session_closed":
            return style("dim", f"[session closed: {data.get('reason')}]")
        if kind in ("turn_started", "permission_timeout_extended") or (
                kind in ("runtime_log", "runner_started") and not self.verbose):
            return None
        colour = "red" if kind in ("gap", "runner_crashed", "runtime_protocol_error") else "dim"
        return style(colour, f"[{kind}] {describe(event)}")

    def permission_line(self, event: dict[str, Any], prompt: bool) -> str:
        data = event.get("data") or {}
        what = f"{data.get('tool')} {one_line(compact(data.get('input')))}"
        if prompt:
            why = f" ({data['rationale']})" if data.get("rationale") else ""
            return self.style("yellow", f"? {what}{why} -- allow? [y/n]")
        if self.client.is_originator(event):
            return self.style("yellow", f"? {what} -- asked of you ({data.get('request_id')})")
        return self.style("yellow", f"? {what} -- asked of {self.who(event).strip() or 'another client'}, "
                                    f"shown read-only: only it can answer")

    def state_line(self, data: dict[str, Any]) -> str | None:
        # busy / waiting_permission / back to idle after a turn are what the other lines show already.
        state, previous = data.get("state"), data.get("previous")
        if state in ("busy", "waiting_permission") or (state == "idle" and previous in ("busy", "waiting_permission")):
            return None
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return self.style("red" if state in ENDED_STATES else "dim", f"[session {state}{reason}]")

    def who(self, event: dict[str, Any]) -> str:
        """``[kind/ref] `` for another client's action, nothing for ours."""
        originator = event.get("originator") or {}
        if not originator or self.client.is_originator(event):
            return ""
        return f"[{originator.get('kind')}/{originator.get('client_ref')}] "

    def text(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self._mid_line = not text.endswith("\n")

    def line(self, text: str) -> None:
        """A line of its own, after ending the agent's text if it was mid-line."""
        self.end_line()
        self.out.write(text + "\n")
        self.out.flush()

    def end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self.out.flush()
            self._mid_line = False


def settled_outcome(kind: str, data: dict[str, Any]) -> str:
    if kind == "permission_answered":
        answer = data.get("answer") or {}
        reason = f" ({answer['reason']})" if answer.get("reason") else ""
        return ("approved" if answer.get("approve") else "denied") + reason
    if kind == "permission_timeout":
        return f"timed out, {data.get('auto_answer', 'deny')}"
    return f"cancelled ({data.get('reason')})"


# -- attach -------------------------------------------------------------------------------
class ResumePoints:
    """Where ``attach`` left each session: a file (``DataDir.attach_point``) holds the id of
    the last event shown, so attaching again resumes right after it."""

    def __init__(self, layout: DataDir, kind: str):
        self.layout = layout
        self.kind = kind

    def path(self, session_id: str) -> Path:
        return self.layout.attach_point(self.kind, session_id)

    def load(self, session_id: str) -> int | None:
        try:
            return int(self.path(session_id).read_text().strip())
        except (OSError, ValueError):
            return None

    def save(self, session_id: str, event_id: int) -> None:
        from cc_daemon.storage import atomic_write

        try:
            path = self.path(session_id)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(path, f"{event_id}\n".encode())
        except OSError as exc:  # the view worked; only resuming it next time is lost
            notice(f"cannot remember where this attach left off ({exc.strerror})")


def run_attach(args: argparse.Namespace) -> int:
    from cc_daemon.storage import DataDir

    from .common import connect

    if not SESSION_ID_RE.match(args.session):
        fail(f"not a session id: {args.session!r}", 2)
    with connect(args) as client:
        session = client.sessions.get(args.session)  # also has the daemon mint our id before the stream
        points = ResumePoints(DataDir.resolve(args.data_dir), client.kind)
        since = start_point(args.since, points.load(args.session), client.last_event_id())
        transcript = Transcript(sys.stdout, client, verbose=args.verbose)
        transcript.line(transcript.style("bold", f"attached to {session['session_id']}") +
                        f" ({session['runtime']}, {session['state']}) in {session['cwd']}" +
                        (f", resuming after event {since}" if since else ""))
        attachment = Attachment(client, session, transcript, read_input=not args.no_input)
        try:
            return attachment.run(since)
        finally:
            if transcript.last_id is not None:
                points.save(session["session_id"], transcript.last_id)


def start_point(asked: int | None, remembered: int | None, newest: int) -> int:
    """Where to start: as asked, else after the remembered event, else the beginning. A
    remembered id beyond the daemon's newest belongs to an event log that was replaced."""
    if asked is not None:
        return asked
    if remembered is not None and remembered > newest:
        notice(f"the daemon's event log is older than event {remembered} seen last time; showing everything")
        return 0
    return remembered or 0


class Attachment:
    """The live view. It first replays what was missed from ``session.history``, then one
    loop in the main thread handles, in arrival order, the events a stream thread receives
    and the lines an input thread reads: every print and every call happens in the main
    thread, and Ctrl-C lands there as KeyboardInterrupt, which detaches."""

    def __init__(self, client: Any, session: dict[str, Any], transcript: Transcript, *, read_input: bool):
        self.client = client
        self.session = session
        self.session_id = session["session_id"]
        self.transcript = transcript
        self.read_input = read_input
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        #: Open requests this terminal may answer, oldest first; the first is the one asked.
        self.prompts: dict[str, dict[str, Any]] = {}
        self.asked: set[str] = set()  # requests whose prompt line was shown
        self.settled: set[str] = set()
        self.live_after = 0  # requests after this event id are raised while we watch

    def run(self, since: int) -> int:
        """Follow the session until Ctrl-C / end of input (detach) or until it ends."""
        previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
        stream = None
        try:
            if self.catch_up(since):
                return 0
            if self.session["state"] in ENDED_STATES:
                reason = f" ({self.session['closed_reason']})" if self.session.get("closed_reason") else ""
                self.transcript.line(f"the session is {self.session['state']}{reason}")
                return 0
            if self.read_input:
                self.transcript.line(self.transcript.style(
                    "dim", "type a message and Enter to send it; y or n answers a prompt; "
                           "Ctrl-C detaches (the session keeps running)"))
            self.ask_next()
            resume = since if self.transcript.last_id is None else self.transcript.last_id
            stream = self.client.clone().events(resume, session=self.session_id, read_timeout=None,
                                                on_reconnect=lambda message: self.inbox.put(("notice", message)))
            threading.Thread(target=self.pump_events, args=(stream,), name="attach-events", daemon=True).start()
            if self.read_input:
                threading.Thread(target=self.pump_lines, args=(sys.stdin.fileno(),), name="attach-input",
                                 daemon=True).start()
            return self.loop()
        except KeyboardInterrupt:
            return self.detach()
        finally:
            if stream is not None:
                stream.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def catch_up(self, since: int) -> bool:
        """Show the stored events after ``since``; True when they include the session's end.
        The requests the daemon reports pending for us are the ones still to answer."""
        self.live_after = self.client.last_event_id()
        if self.read_input:
            for request in self.client.permissions.pending():
                if request.get("session_id") == self.session_id:
                    self.prompts[request["request_id"]] = request
        ended = False
        for event in self.client.sessions.iter_history(self.session_id, since):
            ended = self.on_event(event) or ended
        return ended

    def loop(self) -> int:
        while True:
            kind, item = self.inbox.get()
            if kind == "event":
                if self.on_event(item):
                    return 0
            elif kind == "line":
                self.on_line(item)
            elif kind == "eof":
                return self.detach()
            elif kind == "notice":
                notice(item)
            else:  # "failed": the stream could not go on
                raise item

    def detach(self) -> int:
        self.transcript.line(f"detached from {self.session_id}; it keeps running. "
                             f"Attach again with: cheetahclaws session attach {self.session_id}")
        return 0

    # -- the two feeding threads ----------------------------------------------------------
    def pump_events(self, stream: Any) -> None:
        try:
            for event in stream:
                self.inbox.put(("event", event))
        except Exception as exc:  # handed to the main thread, which reports it
            self.inbox.put(("failed", exc))

    def pump_lines(self, fd: int) -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside sys.stdin's buffer would hold
        # its lock and make the interpreter abort at exit.
        decoder, pending = codecs.getincrementaldecoder("utf-8")("replace"), ""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the terminal went away
                chunk = b""
            if not chunk:
                if pending.strip():
                    self.inbox.put(("line", pending))
                self.inbox.put(("eof", None))
                return
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                self.inbox.put(("line", line))

    # -- events ---------------------------------------------------------------------------
    def on_event(self, event: dict[str, Any]) -> bool:
        """Show one event; True when the session has ended."""
        kind, data = event["type"], event.get("data") or {}
        request_id = data.get("request_id")
        if kind == "permission_request" and self.answerable(event):
            self.prompts.setdefault(request_id, data)
            if next(iter(self.prompts)) == request_id and request_id not in self.asked:
                self.asked.add(request_id)
                self.transcript.show(event, prompt=True)
            else:  # asked later, once the ones before it are answered
                self.transcript.show(event)
            return False
        self.transcript.show(event)
        if kind in SETTLED:
            self.settled.add(request_id)
            self.prompts.pop(request_id, None)
            self.ask_next()
        return kind == "session_closed" or (kind == "session_state" and data.get("state") in UNANNOUNCED_ENDS)

    def answerable(self, event: dict[str, Any]) -> bool:
        """A request this terminal raised that is still open: raised while we watch, or
        reported pending by the daemon when we attached."""
        request_id = (event.get("data") or {}).get("request_id")
        if not self.read_input or request_id in self.settled or not self.client.is_originator(event):
            return False
        return event.get("id", 0) > self.live_after or request_id in self.prompts

    def ask_next(self) -> None:
        """Show the prompt of the oldest open request, unless it is already showing."""
        if self.prompts:
            request_id, request = next(iter(self.prompts.items()))
            if request_id not in self.asked:
                self.asked.add(request_id)
                self.transcript.show({"type": "permission_request", "data": request}, prompt=True)

    # -- typed lines ----------------------------------------------------------------------
    def on_line(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        if self.prompts:
            return self.answer(next(iter(self.prompts)), text)
        reply = self.client.sessions.send(self.session_id, text)
        self.transcript.typed_turns.add(reply["turn_id"])

    def answer(self, request_id: str, text: str) -> None:
        from cc_daemon.client import RpcCallError

        word, _, reason = text.partition(" ")
        approve = {"y": True, "yes": True, "n": False, "no": False}.get(word.lower())
        if approve is None:
            self.transcript.line(self.transcript.style("yellow", "answer y or n (n <reason> says why)"))
            return
        try:
            self.client.permissions.answer(request_id, approve, reason=reason.strip() or None)
        except RpcCallError as exc:  # settled meanwhile (timed out, turn cancelled): say so, move on
            self.transcript.line(self.transcript.style("red", f"  {request_id}: {exc.message}"))
        # Its permission_answered event will show the outcome; the next prompt can come now.
        self.settled.add(request_id)
        self.prompts.pop(request_id, None)
        self.ask_next()


def leave(signum: int, _frame: Any) -> None:
    """SIGTERM / SIGHUP (the terminal closed): leave quietly, remembering where we were."""
    raise SystemExit(128 + signum)
