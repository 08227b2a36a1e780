#!/usr/bin/env python3
"""Two frontends on one session: only the one that sent a turn may answer its permission request.

Start a daemon (``cheetahclaws serve``), then:

    python examples/two_frontends.py

What happens, step by step (each step is printed):

1. The *driver* (client kind ``driver``) creates a session of the built-in ``demo`` runtime
   in a fresh temporary directory and sends ``write hello.txt ...``: the demo agent asks
   permission to use its ``Write`` tool before touching anything.
2. The *watcher* (client kind ``watcher``, another client id) follows the session's events,
   sees the ``permission_request``, and tries to approve it. The daemon refuses: only the
   turn's originator may answer (JSON-RPC error -32001, raised as ``NotOriginator``).
3. The driver finds the request among its own pending ones and approves it.
4. The watcher sees the answer, the tool running, the streamed reply and ``turn_done``;
   the file is now in the session's directory. The driver closes the session.

It exits 0 only if all of that behaved as the wire contract says, 1 otherwise (with the
step that went wrong), 3 when no daemon is running. ``--data-dir DIR`` (or
``$CHEETAHCLAWS_HOME``) finds a daemon that does not use ``~/.cheetahclaws``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from cc_daemon.client import Client, DaemonError, EventStream, NotOriginator, NotRunning, event_turn_id

FILE_NAME = "hello.txt"
FILE_TEXT = "Hello from the driver"
#: How long the watcher waits for the next event before calling the session stuck.
STALL_S = 20.0


class ContractBroken(Exception):
    """The daemon did something the wire contract says it must not."""


def say(who: str, message: str) -> None:
    print(f"[{who:<7}] {message}", flush=True)


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def narrate(event: dict) -> None:
    """What the watcher sees, one line per event that matters to a human."""
    data, kind = event.get("data") or {}, event["type"]
    if kind == "session_state":
        say("watcher", f"session is now {data.get('state')}")
    elif kind == "permission_request":
        by = (event.get("originator") or {}).get("kind")
        say("watcher", f"permission_request {data['request_id']}: {data['tool']} {compact(data['input'])} "
                       f"(asked on behalf of a {by!r} client)")
    elif kind == "permission_answered":
        verdict = "approved" if data["answer"].get("approve") else "denied"
        say("watcher", f"permission_answered {data['request_id']}: {verdict}")
    elif kind == "tool_start":
        say("watcher", f"tool_start {data['tool']} {compact(data['input'])}")
    elif kind == "tool_end":
        say("watcher", f"tool_end ok={data['ok']} {data.get('output', '')!r}")
    elif kind == "text_chunk":
        say("watcher", f"text_chunk {data['text']!r}")
    elif kind == "turn_done":
        say("watcher", f"turn_done {data['status']} usage={compact(data.get('usage', {}))}")


def events_until(stream: Iterator[dict], kind: str, turn_id: str) -> dict:
    """Narrate the stream up to the first ``kind`` event of ``turn_id`` and return it."""
    for event in stream:
        narrate(event)
        if event["type"] == kind and event_turn_id(event) == turn_id:
            return event
    raise ContractBroken(f"the event stream ended before {kind} of turn {turn_id}")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise ContractBroken(what)
    say("check", f"ok: {what}")


def play(driver: Client, watcher: Client, workdir: Path) -> None:
    start = watcher.last_event_id()
    session_id = driver.sessions.create("demo", workdir, name="two-frontends")["session_id"]
    say("driver", f"created demo session {session_id} in {workdir}")
    try:
        stream: EventStream = watcher.events(start, session=session_id, reconnect=False, read_timeout=STALL_S)
        with stream:
            say("watcher", f"following the events of {session_id}")
            text = f"write {FILE_NAME} {FILE_TEXT}"
            turn_id = driver.sessions.send(session_id, text)["turn_id"]
            say("driver", f"sent {text!r} (turn {turn_id})")

            request = events_until(stream, "permission_request", turn_id)
            request_id = request["data"]["request_id"]
            check("client_id" not in (request.get("originator") or {}),
                  "the watcher's copy of the request does not reveal the driver's client id")
            try:
                watcher.permissions.approve(request_id, reason="the watcher tries")
            except NotOriginator as refused:
                say("watcher", f"tried to approve {request_id}: refused, error {refused.code}: {refused.message}")
            else:
                raise ContractBroken("the daemon let the watcher answer a request it did not originate")

            pending = [item["request_id"] for item in driver.permissions.pending()]
            say("driver", f"my pending permission requests: {pending}")
            check(request_id in pending, "the request is among the driver's own")
            driver.permissions.approve(request_id, reason="go ahead")
            say("driver", f"approved {request_id}")

            done = events_until(stream, "turn_done", turn_id)
        check(done["data"]["status"] == "completed", "the turn completed")
        written = workdir / FILE_NAME
        check(written.is_file() and written.read_text() == FILE_TEXT + "\n",
              f"{FILE_NAME} in the session's cwd holds {FILE_TEXT!r}")
    finally:
        driver.sessions.close(session_id)
        say("driver", f"closed session {session_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Drive a demo session from one client, watch it from another.")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the daemon's data dir (default: $CHEETAHCLAWS_HOME or ~/.cheetahclaws)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="two-frontends-"))
    try:
        with Client.connect(data_dir=args.data_dir, kind="driver") as driver, \
                Client.connect(data_dir=args.data_dir, kind="watcher") as watcher:
            play(driver, watcher, workdir)
    except NotRunning as exc:
        print(f"{exc}\nstart one with: cheetahclaws serve", file=sys.stderr)
        return 3
    except (ContractBroken, DaemonError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("OK: both frontends saw the same session, and only the driver could answer for it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
