"""How a session reads in a terminal: the transcript, and ``attach``'s live view.

Owns: ``Transcript``, how a session's events read as a conversation (agent text as it
streams, one line per tool step, permission requests, turn ends); ``Attachment``, the
live view that sends typed lines as turns and answers the permission prompts this client
originated; ``ResumePoints``, where ``attach`` left each session.

Must not: decide who may answer a permission request (the daemon does: we only avoid
offering prompts it would refuse), or reconnect a stream itself (``EventStream`` does).
"""

from __future__ import annotations

import argparse
import codecs
import os
import queue
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .common import fail
from .events_verb import Style, compact, describe, notice, one_line

if TYPE_CHECKING:  # the CLI imports the daemon's modules only in the verbs that run
    from cc_daemon.storage import DataDir

#: The states a session never leaves (the contract's ended states).
ENDED_STATES = frozenset({"parked", "stopped", "failed"})
#: Ended states no ``session_closed`` follows (``stopped`` is always followed by one: wait for it).
UNANNOUNCED_ENDS = ENDED_STATES - {"stopped"}
#: Events that settle a permission request one way or another.
SETTLED = frozenset({"permission_answered", "permission_timeout", "permission_cancelled"})
#: What a session id may look like before it names a file of ours (ses_<16 hex> in practice).
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


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
        reply = parse_answer(text)
        if reply is None:
            self.transcript.line(self.transcript.style("yellow", ANSWER_HINT))
            return
        send_answer(self.client, self.transcript, request_id, *reply)
        # Its permission_answered event will show the outcome; the next prompt can come now.
        self.settled.add(request_id)
        self.prompts.pop(request_id, None)
        self.ask_next()


ANSWER_HINT = "answer y or n (n <reason> says why)"


def parse_answer(text: str) -> tuple[bool, str | None] | None:
    """A typed answer to a prompt: ``y``/``yes`` or ``n``/``no``, then an optional reason."""
    word, _, reason = text.strip().partition(" ")
    approve = {"y": True, "yes": True, "n": False, "no": False}.get(word.lower())
    return None if approve is None else (approve, reason.strip() or None)


def send_answer(client: Any, transcript: Transcript, request_id: str, approve: bool, reason: str | None) -> None:
    from cc_daemon.client import RpcCallError

    try:
        client.permissions.answer(request_id, approve, reason=reason)
    except RpcCallError as exc:  # settled meanwhile (timed out, turn cancelled): say so, move on
        transcript.line(transcript.style("red", f"  {request_id}: {exc.message}"))


def leave(signum: int, _frame: Any) -> None:
    """SIGTERM / SIGHUP (the terminal closed): leave quietly, remembering where we were."""
    raise SystemExit(128 + signum)
