"""``cheetahclaws session new|send|ls|show|attach|cancel|close|restart|delegate|logs``: drive agent sessions
from a terminal.

Owns: the session verbs' parsers, and the verbs but ``attach`` (``session_view``: the
transcript and the live view).
Must not: decide who may answer a permission request (the daemon does: we only avoid
offering prompts it would refuse), or reconnect a stream itself (``EventStream`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .common import EXIT_NEEDS_ANSWER, EXIT_REFUSED, add_client, client_verb, fail, non_negative_int
from .events_verb import Style, compact, event_line, notice
from .session_view import ANSWER_HINT, ENDED_STATES, Transcript, parse_answer, run_attach, send_answer

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
3 no daemon answers; 5 `send --wait --on-permission exit`: the turn waits for a permission answer."""

REFUSED = "the daemon refused (error code, message and data on stderr)"
EXIT_CODES = """exit codes: 0 {ok}; 1 {failed};
2 bad usage; 3 no daemon answers."""

#: What ``send --wait`` does when its turn asks permission (see its --help).
ON_PERMISSION = ("ask", "allow", "deny", "wait", "exit")
SESSION_HELP = "the session's id (`cheetahclaws session ls` lists them)"


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
    new.add_argument("runtime", metavar="RUNTIME", help="demo, command, claude, codex, custom, or a runtime from a plugin")
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
    new.add_argument("--max-turns", type=int, metavar="N", help="budget: the session starts at most N turns")
    new.add_argument("--max-cost-usd", type=float, metavar="USD", help="budget: the cost its runtime reports, summed")
    new.add_argument("--max-wall-s", type=float, metavar="S", help="budget: seconds its turns run, summed")
    new.add_argument("--worktree", action="store_true",
                     help="isolate it: a git worktree and branch of its own, made from the repository of --cwd")
    new.add_argument("--json", action="store_true", help="print the whole new session as JSON")

    send = action(actions, "send", run_send, "start a turn (with --wait: follow it to its end)",
                  "cheetahclaws session send ses_0123456789abcdef 'run ls -la' --wait --on-permission deny",
                  failed=REFUSED + ", or with --wait the turn ended other than completed; "
                         f"{EXIT_NEEDS_ANSWER} with --on-permission exit, the turn asks permission "
                         "(the request id on stdout)")
    send.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    send.add_argument("text", nargs="+", metavar="TEXT", help="the message (words are joined; - reads stdin)")
    send.add_argument("--wait", action="store_true",
                      help="print the session's output until this turn is done")
    send.add_argument("--on-permission", choices=ON_PERMISSION, metavar="WHAT",
                      help="with --wait, when the turn asks permission: ask (at a terminal: y or n; the "
                           "default there), allow, deny, wait (for an answer from elsewhere, e.g. "
                           f"`session attach`), or exit at once with code {EXIT_NEEDS_ANSWER} and the request "
                           "id on stdout (the default without a terminal; the request stays pending)")
    send.add_argument("--message-id", metavar="ID",
                      help="idempotency key: sending the same id again never starts a second turn")

    ls = action(actions, "ls", run_ls, "list sessions: id, name, state, runtime, cwd, age, tokens, cost, last activity",
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
    close.add_argument("--delete-branch", action="store_true", help="a worktree session: delete its branch too")
    close.add_argument("--discard-changes", action="store_true",
                       help="a worktree session: remove its worktree even with uncommitted changes in it")

    delegate = action(actions, "delegate", run_delegate,
                      "let another client answer the permission requests you originate here, or take it back",
                      "cheetahclaws session delegate ses_0123456789abcdef 0123456789abcdef   # the client's ref\n"
                      "  cheetahclaws session delegate ses_0123456789abcdef --take-back\n"
                      "  cheetahclaws rpc system.whoami --client-kind web   # a client's ref")
    delegate.add_argument("session", metavar="SESSION", help=SESSION_HELP)
    delegate.add_argument("client_ref", nargs="?", metavar="CLIENT_REF", help="the delegate's public client_ref")
    delegate.add_argument("--take-back", action="store_true", help="end your delegation in this session")

    restart = action(actions, "restart", run_restart, "start a parked session's runtime again (fresh backoff)",
                     "cheetahclaws session restart ses_0123456789abcdef")
    restart.add_argument("session", metavar="SESSION", help=SESSION_HELP)

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
            restart=args.restart, max_turn_s=args.max_turn_s, max_turns=args.max_turns,
            max_cost_usd=args.max_cost_usd, max_wall_s=args.max_wall_s,
            isolation="worktree" if args.worktree else None)
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
        on_permission = args.on_permission or ("ask" if sys.stdin.isatty() else "exit")
        done: dict[str, Any] = {}
        for event in client.sessions.turn(args.session, text, message_id=args.message_id, read_timeout=None):
            ours = event["type"] == "permission_request" and client.is_originator(event)
            transcript.show(event, prompt=ours and on_permission == "ask")
            if ours and (code := settle_permission(client, transcript, event, on_permission, args.session)):
                return code
            done = event
        transcript.end_line()
    return 0 if (done.get("data") or {}).get("status") == "completed" else EXIT_REFUSED


def settle_permission(client: Any, transcript: Transcript, event: dict[str, Any], on_permission: str,
                      session_id: str) -> int | None:
    """Deal with a permission request of our turn as ``--on-permission`` says; an exit code
    when the command must end here (the request stays pending for an answer from elsewhere)."""
    request_id = event["data"]["request_id"]
    if on_permission == "exit":
        transcript.end_line()
        notice(f"the turn asks permission ({request_id}); answer it with: cheetahclaws session attach "
               f"{session_id}")
        print(request_id, flush=True)
        return EXIT_NEEDS_ANSWER
    if on_permission == "wait":
        notice(f"waiting for an answer to {request_id}: cheetahclaws session attach {session_id}")
    elif on_permission == "ask":
        while (reply := parse_answer(input())) is None:  # EOFError (the terminal closed) ends the command
            transcript.line(transcript.style("yellow", ANSWER_HINT))
        send_answer(client, transcript, request_id, *reply)
    else:
        send_answer(client, transcript, request_id, on_permission == "allow",
                    f"answered by `session send --on-permission {on_permission}`")
    return None


def run_cancel(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        result = client.sessions.cancel(args.session, args.turn)
    print(f"cancelled {result['turn_id']}" if result["cancelled"] else "no turn to cancel")
    return 0


def run_delegate(args: argparse.Namespace) -> int:
    from .common import connect

    if bool(args.client_ref) == args.take_back:
        fail("name the delegate's CLIENT_REF, or give --take-back", 2)
    with connect(args) as client:
        done = client.sessions.delegate(args.session, None if args.take_back else args.client_ref)
    delegate = done["delegate"]
    print(f"delegated to {delegate['kind']}/{delegate['client_ref']}" if delegate else "taken back")
    return 0


def run_restart(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        session = client.sessions.restart(args.session)
    print(f"restarted {session['session_id']} ({session['state']})")
    return 0


def run_close(args: argparse.Namespace) -> int:
    from .common import connect

    with connect(args) as client:
        session = client.sessions.close(args.session, delete_branch=args.delete_branch or None,
                                        discard_changes=args.discard_changes or None)
    print(f"closed {session['session_id']} ({session['state']})")
    released = session.get("worktree_released")
    if released:
        print(f"worktree {released['path']}: {'removed' if released['removed'] else 'kept'}, branch "
              f"{released['branch']} {'deleted' if released['branch_deleted'] else 'kept'}"
              + (f" ({released['reason']})" if released["reason"] else ""))
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
             duration(now - s["created_at"]), *usage_cells(s.get("usage") or {}),
             f"{duration(now - s['last_activity_at'])} ago" if s["last_activity_at"] else "-"] for s in sessions]
    print_table(["ID", "NAME", "STATE", "RUNTIME", "CWD", "AGE", "TOKENS", "COST", "LAST ACTIVITY"], rows,
                lambda column, text: style(state_colour(text), text) if column == 2 else text)
    return 0


def usage_cells(usage: dict[str, Any]) -> list[str]:
    """Tokens and cost as the runtime reported them, summed; "-" for what it never reported
    (not a zero: a runtime that reports no cost has not cost nothing)."""
    from cc_daemon.usage_ledger import TOKEN_FIELDS

    tokens = [usage[name] for name in TOKEN_FIELDS if name in usage]
    cost = usage.get("cost_usd")
    return [f"{sum(tokens):,}" if tokens else "-", f"${cost:.4f}" if cost is not None else "-"]


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
    if session.get("worktree"):
        worktree = session["worktree"]
        yield "worktree", f"{worktree['path']}, branch {worktree['branch']} of {worktree['repo']}"
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
