#!/usr/bin/env python3
"""A custom agent runtime in one file: it shouts back what it is told (upper-cased, or
reversed with ``--reverse``), streamed a word at a time, and reports usage when done.

Try it against a running daemon (``cheetahclaws serve``):

    python examples/custom_runtime.py "hello there"
    python examples/custom_runtime.py --reverse "hello there"

That plugs this file into the daemon through the built-in ``custom`` runtime, whose
``args`` are the command line of a program speaking the runtime protocol (the same as
``cheetahclaws rpc session.create runtime=custom cwd="$PWD"
args='["python3", "/abs/path/examples/custom_runtime.py", "--as-runtime"]'``), sends the
text as one turn, prints the reply as it streams in, and closes the session. Any frontend
can drive such a session like any other (``cheetahclaws session attach``, the client's
``sessions.send``); ``--data-dir DIR`` (or ``$CHEETAHCLAWS_HOME``) finds a daemon that
does not use ``~/.cheetahclaws``.

The runtime protocol (RFC 0004; the JSON Schema of every message is in
``cc_daemon/runtimes/protocol.py``) is one JSON object per line: the daemon writes to the
runtime's stdin, the runtime answers on its stdout, and its stderr goes to the session's
log. One session of this runtime, as the daemon sees it (``->`` to the runtime, ``<-``
from it); run ``python examples/custom_runtime.py --as-runtime`` and paste the ``->``
lines to play the daemon yourself:

    -> {"type":"init","protocol":1,"session_id":"ses_1","cwd":"/tmp","mode":"interactive","args":[],"resume_token":null}
    <- {"type":"ready","protocol":1,"runtime":"shout","version":"1.0"}
    -> {"type":"turn","turn_id":"turn_1","text":"hello there"}
    <- {"type":"text","turn_id":"turn_1","text":"HELLO "}
    <- {"type":"text","turn_id":"turn_1","text":"THERE"}
    <- {"type":"turn_done","turn_id":"turn_1","status":"completed","usage":{"input_tokens":2,"output_tokens":2}}
    -> {"type":"stop","reason":"session closed"}

A ``cancel`` for the current turn ends it early with ``"status":"cancelled"``. The
runtime half below (``ShoutAgent``) stands on ``cc_daemon/runtimes/agent.py``, which does
the handshake, the turn loop and cancellation; a runtime in another language writes the
same lines itself. To list a runtime under a name of its own in ``session.runtimes``
instead, ship a ``cc_daemon.runtimes.registry.Runtime`` subclass whose ``launch`` returns
its command line, in a package declaring it in the ``cc_daemon.runtimes`` entry-point group.

Exit codes (trying it): 0 the turn completed, 1 it did not or the daemon refused, 3 no
daemon running.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cc_daemon.runtimes.agent import Agent, Turn, runtime_main

RUNTIME_NAME = "shout"
RUNTIME_VERSION = "1.0"
AS_RUNTIME = "--as-runtime"


# -- the runtime: what the daemon runs -------------------------------------------------------
class ShoutAgent(Agent):
    """Answers each turn with its text upper-cased (or reversed), one word per ``text`` chunk."""

    def __init__(self, init, channel, options: argparse.Namespace):
        super().__init__(init, channel)
        self.options = options
        print(f"{RUNTIME_NAME}: ready in {self.cwd}", file=sys.stderr, flush=True)  # -> the session's log

    def on_turn(self, turn: Turn) -> None:
        reply = turn.text[::-1] if self.options.reverse else turn.text.upper()
        words = reply.split(" ") if reply else []
        for index, word in enumerate(words):
            turn.say(word if index == len(words) - 1 else word + " ")
            # Pause between chunks, listening for a cancel; False means the turn was cancelled.
            if self.options.delay and not turn.wait(self.options.delay):
                return turn.done("cancelled")
        turn.done("completed", {"input_tokens": len(turn.text.split()), "output_tokens": len(words)})


def runtime_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"{RUNTIME_NAME} runtime")
    parser.add_argument(AS_RUNTIME, action="store_true", help="speak the runtime protocol on stdin/stdout")
    parser.add_argument("--reverse", action="store_true", help="reverse the text instead of upper-casing it")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S", help="pause S seconds between chunks")
    return parser.parse_args(argv)


# -- trying it: a frontend that plugs the runtime into a daemon -------------------------------
def try_it(argv: list[str]) -> int:
    from cc_daemon.client import Client, DaemonError, NotRunning  # the runtime process never needs these

    parser = argparse.ArgumentParser(description="Run this file as a session's runtime and send it one turn.")
    parser.add_argument("text", nargs="?", default="hello from a custom runtime", help="what to send")
    parser.add_argument("--reverse", action="store_true", help="reverse the text instead of upper-casing it")
    parser.add_argument("--delay", type=float, default=0.05, metavar="S", help="pause S seconds between chunks")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the daemon's data dir (default: $CHEETAHCLAWS_HOME or ~/.cheetahclaws)")
    args = parser.parse_args(argv)
    command = [sys.executable, str(Path(__file__).resolve()), AS_RUNTIME, "--delay", str(args.delay),
               *(["--reverse"] if args.reverse else [])]
    try:
        with Client.connect(data_dir=args.data_dir, kind="custom-runtime-example") as client:
            # restart="none": if the runtime is broken, say so now instead of restarting it.
            session_id = client.sessions.create("custom", Path.cwd(), name=RUNTIME_NAME, args=command,
                                                restart="none")["session_id"]
            print(f"session {session_id} runs: {shlex.join(command)}", flush=True)
            try:
                status = send_and_print(client, session_id, args.text)
                if status != "completed":
                    for line in client.sessions.get(session_id).get("stderr_tail", []):
                        print(f"runtime stderr: {line}", file=sys.stderr)
            finally:
                client.sessions.close(session_id)
    except NotRunning as exc:
        print(f"{exc}\nstart one with: cheetahclaws serve", file=sys.stderr)
        return 3
    except DaemonError as exc:
        print(f"the daemon refused: {exc}", file=sys.stderr)
        return 1
    return 0 if status == "completed" else 1


def send_and_print(client, session_id: str, text: str) -> str:
    """Send ``text`` as one turn, print the reply as it streams; returns the turn's status."""
    for event in client.sessions.turn(session_id, text):
        data = event["data"]
        if event["type"] == "text_chunk":
            print(data["text"], end="", flush=True)
        elif event["type"] in ("runtime_error", "runtime_protocol_error"):
            print(f"\n{event['type']}: {data}", file=sys.stderr)
        elif event["type"] == "turn_done":
            reason = f" ({data['reason']})" if data.get("reason") else ""
            print(f"\nturn {data['status']}{reason}, usage {data.get('usage', {})}", flush=True)
    return event["data"]["status"]  # turn() ends with this turn's turn_done


if __name__ == "__main__":
    if AS_RUNTIME in sys.argv[1:]:
        options = runtime_options(sys.argv[1:])  # bad options exit here, before the handshake
        runtime_main(lambda init, channel: ShoutAgent(init, channel, options), RUNTIME_NAME, RUNTIME_VERSION)
    else:
        sys.exit(try_it(sys.argv[1:]))
