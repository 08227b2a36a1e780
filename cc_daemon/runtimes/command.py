"""The ``command`` runtime: wraps any program given as the session's ``args``.

Owns: running that program once per turn in the session's cwd and streaming what it
prints. The turn's text goes to the program's stdin (plus a final newline, then EOF); or,
when any argument contains ``{text}``, into that argument instead, with an empty stdin.
Each stdout line streams as a ``text`` chunk; its stderr goes to the session's stderr log.
Exit code 0 completes the turn; anything else reports an ``error`` and fails it. A cancel
terminates the program (and whatever it started).

Must not: use a shell to build the command line (the args are an argv, not a script), or
keep a program running between turns.
"""

from __future__ import annotations

import sys

from .. import __version__
from .agent import Agent, Turn, runtime_main

#: An argument containing this receives the turn's text (argument mode).
TEXT_PLACEHOLDER = "{text}"
#: Exit status that tells the supervisor a failure is permanent: it parks instead of retrying.
CONFIG_ERROR_EXIT = 78


class CommandAgent(Agent):
    def __init__(self, init, channel):
        super().__init__(init, channel)
        if not self.args:
            print("command runtime: no program given in the session's args", file=sys.stderr, flush=True)
            sys.exit(CONFIG_ERROR_EXIT)
        self.argument_mode = any(TEXT_PLACEHOLDER in arg for arg in self.args)

    def on_turn(self, turn: Turn) -> None:
        if self.argument_mode:
            argv, stdin_text = [arg.replace(TEXT_PLACEHOLDER, turn.text) for arg in self.args], None
        else:
            argv, stdin_text = self.args, turn.text if turn.text.endswith("\n") else turn.text + "\n"
        try:
            code = turn.run_child(argv, self.cwd, stdin_text, turn.say)
        except OSError as exc:
            turn.error(f"cannot run {argv[0]}: {exc.strerror or exc}")
            return turn.done("failed")
        if code is None:
            return turn.done("cancelled")
        if code != 0:
            turn.error(f"{argv[0]} exited with code {code}" if code > 0 else f"{argv[0]} was killed by signal {-code}")
            return turn.done("failed")
        turn.done("completed")


if __name__ == "__main__":
    runtime_main(CommandAgent, "command", __version__)
