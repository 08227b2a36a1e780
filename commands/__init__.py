"""The command line: ``cheetahclaws`` / ``cc-daemon`` / ``python -m cc_daemon``.

Owns: argument parsing, one module per verb group, exit codes and human-readable output.
A bad flag or an unusable value is one line on stderr and exit code 2, never a traceback.

Exit codes (all verbs): 0 success; 1 failure; 2 bad usage or configuration;
``daemon status`` follows LSB: 0 running, 1 dead with a stale discovery file, 3 not running,
4 status unknown (the process is alive but does not answer).

Must not: reach into daemon internals from a client verb: client verbs talk to the daemon
over the wire through ``cc_daemon.client``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

#: Each verb and the module that defines it, in the order ``--help`` lists them. A command
#: line naming a verb imports and builds that verb only: ``serve`` (and with it every cold
#: start of the daemon) should not pay ~30 ms for the client verbs' modules and parsers.
VERBS = {"serve": "serve", "daemon": "daemon_verbs", "rpc": "rpc_verb", "events": "events_verb",
         "session": "session_verb"}

EXAMPLES = """examples:
  cheetahclaws serve                                   # Unix socket under ~/.cheetahclaws/run
  cheetahclaws serve --listen tcp://127.0.0.1:8765 --print-token
  cheetahclaws daemon status
  cheetahclaws daemon stop
  cheetahclaws rpc system.status                       # call any method (rpc.discover lists them)
  cheetahclaws events --since 0 --type session_state   # follow the event stream
  S=$(cheetahclaws session new demo)                   # a scripted demo agent in the current dir
  cheetahclaws session attach $S                       # type `write hello.txt hi`, answer y; Ctrl-C detaches
  cheetahclaws session ls
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def build_parser(only: str | None = None) -> Parser:
    """The whole command line, or with ``only`` the parser of that one verb under it."""
    parser = Parser(prog="cheetahclaws", description="cc_daemon: local control plane for AI coding agents.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True
    for verb, module in VERBS.items():
        if only is None or verb == only:
            importlib.import_module(f".{module}", __name__).add_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top-level parser has no options but --help, so a verb can only come first; anything
    # else (no verb, --help, a typo) gets the whole parser and its usual help or error.
    parser = build_parser(argv[0] if argv and argv[0] in VERBS else None)
    args = parser.parse_args(argv)
    from .common import resolve_profile

    resolve_profile(args)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stay quiet like any Unix filter, and point
        # stdout at /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
