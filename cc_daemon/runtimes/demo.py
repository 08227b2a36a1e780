"""The ``demo`` runtime: a deterministic scripted agent, for tests, examples and trying the
daemon with no AI installed. Run by the daemon as ``python -m cc_daemon.runtimes.demo``.

Owns: a small command language that exercises every message of RFC 0004:

    run <shell command>     asks permission for tool ``Bash``; runs it in the cwd only if approved
    write <file> <text>     asks permission for tool ``Write``; writes the file only if approved,
                            and only inside the session's cwd
    sleep <seconds>         waits (cancellable), for trying cancel, timeouts and crashes mid-turn
    fail <message>          reports an ``error`` and ends the turn as failed
    exit <code>             exits the process at once (fault injection for supervision)
    help                    lists these
    anything else           is echoed back, streamed word by word

Session ``args`` (fault injection and pacing): ``--exit-on-start CODE`` exits before
``ready``; ``--chunk-delay S`` pauses between streamed chunks.

Must not: act outside the session's cwd, or use any tool without an approval.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import __version__
from .agent import Agent, Turn, runtime_main

HELP = """demo runtime commands:
  run <shell command>   ask to run it (tool Bash), run it in the cwd if approved
  write <file> <text>   ask to write the file (tool Write), inside the cwd only
  sleep <seconds>       wait, cancellable
  fail <message>        end the turn as failed
  exit <code>           exit the runtime process (fault injection)
  help                  this text
anything else is echoed back.
"""


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="demo runtime", add_help=False)
    parser.add_argument("--exit-on-start", type=int, metavar="CODE")
    parser.add_argument("--chunk-delay", type=float, default=0.0, metavar="S")
    return parser.parse_args(args)


class DemoAgent(Agent):
    def __init__(self, init, channel):
        super().__init__(init, channel)
        self.options = parse_args(self.args)
        print(f"demo runtime: pid {os.getpid()}, cwd {self.cwd}", file=sys.stderr, flush=True)
        if self.options.exit_on_start is not None:
            print(f"demo runtime: exiting with {self.options.exit_on_start} as asked", file=sys.stderr, flush=True)
            sys.exit(self.options.exit_on_start)
        self.tool_uses = 0

    def on_turn(self, turn: Turn) -> None:
        command, _, rest = turn.text.strip().partition(" ")
        handler = {"run": self.run_shell, "write": self.write_file, "sleep": self.sleep, "fail": self.fail,
                   "exit": self.exit, "help": self.help}.get(command, self.echo)
        turn.log("debug", f"demo: {handler.__name__} ({len(turn.text)} chars)")
        handler(turn, rest.strip())

    # -- commands -----------------------------------------------------------------------
    def echo(self, turn: Turn, _rest: str) -> None:
        self.stream(turn, f"You said: {turn.text}")
        self.finish(turn, f"You said: {turn.text}")

    def help(self, turn: Turn, _rest: str) -> None:
        self.stream(turn, HELP)
        self.finish(turn, HELP)

    def run_shell(self, turn: Turn, command: str) -> None:
        if not command:
            return self.fail(turn, "usage: run <shell command>")
        approved, reason = turn.ask_permission("Bash", {"command": command}, f"The demo wants to run: {command}")
        if not approved:
            return self.refused(turn, f"Not running `{command}`", reason)
        tool_use_id = self.next_tool_use()
        turn.tool_start(tool_use_id, "Bash", {"command": command})
        output: list[str] = []
        code = turn.run_child(["/bin/sh", "-c", command], self.cwd, None, output.append)
        if code is None:
            turn.tool_end(tool_use_id, False, "cancelled")
            return turn.done("cancelled")
        turn.tool_end(tool_use_id, code == 0, "".join(output))
        reply = f"`{command}` exited with {code}.\n{''.join(output)}"
        self.stream(turn, reply)
        self.finish(turn, reply)

    def write_file(self, turn: Turn, rest: str) -> None:
        name, _, content = rest.partition(" ")
        if not name:
            return self.fail(turn, "usage: write <file> <text>")
        target = self.inside_cwd(name)
        if target is None:
            return self.fail(turn, f"refusing to write {name!r}: it is outside the session's cwd")
        relative = str(target.relative_to(Path(self.cwd).resolve()))
        data = content + "\n"  # a text file's last line ends with a newline: what is asked is what is written
        size = len(data.encode())
        approved, reason = turn.ask_permission("Write", {"file_path": relative, "content": data},
                                               f"The demo wants to write {size} byte{'s' * (size != 1)} to {relative}")
        if not approved:
            return self.refused(turn, f"Not writing {relative}", reason)
        tool_use_id = self.next_tool_use()
        turn.tool_start(tool_use_id, "Write", {"file_path": relative})
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode())
        turn.tool_end(tool_use_id, True, f"wrote {size} byte{'s' * (size != 1)}")
        reply = f"Wrote {relative}."
        self.stream(turn, reply)
        self.finish(turn, reply)

    def sleep(self, turn: Turn, seconds: str) -> None:
        try:
            duration = float(seconds)
        except ValueError:
            return self.fail(turn, "usage: sleep <seconds>")
        turn.say(f"Sleeping for {duration:g} s.")
        if not turn.wait(duration):
            turn.say(" Cancelled.")
            return turn.done("cancelled")
        turn.say(" Done.")
        self.finish(turn, "Done.")

    def fail(self, turn: Turn, message: str) -> None:
        turn.error(message or "failed as asked")
        turn.done("failed", self.usage(turn, ""))

    def exit(self, turn: Turn, code: str) -> None:
        print(f"demo runtime: exiting with {code or 1} as asked", file=sys.stderr, flush=True)
        os._exit(int(code) if code.lstrip("-").isdigit() else 1)

    # -- helpers ------------------------------------------------------------------------
    def refused(self, turn: Turn, what: str, reason: str) -> None:
        reply = f"{what}: permission denied ({reason or 'no reason given'})."
        self.stream(turn, reply)
        self.finish(turn, reply)

    def stream(self, turn: Turn, text: str) -> None:
        """Say ``text`` a word at a time, as a model streams tokens."""
        words = text.split(" ")
        for index, word in enumerate(words):
            turn.say(word if index == len(words) - 1 else word + " ")
            if self.options.chunk_delay and not turn.wait(self.options.chunk_delay):
                return

    def finish(self, turn: Turn, reply: str) -> None:
        turn.done("cancelled" if turn.cancelled else "completed", self.usage(turn, reply))

    @staticmethod
    def usage(turn: Turn, reply: str) -> dict:
        # Deterministic stand-ins for token counts: one "token" per word.
        return {"input_tokens": len(turn.text.split()), "output_tokens": len(reply.split()), "cost_usd": 0.0}

    def inside_cwd(self, name: str) -> Path | None:
        root = Path(self.cwd).resolve()
        target = (root / name).resolve()
        return target if target != root and target.is_relative_to(root) else None

    def next_tool_use(self) -> str:
        self.tool_uses += 1
        return f"tool-{self.tool_uses}"


if __name__ == "__main__":
    runtime_main(DemoAgent, "demo", __version__)
