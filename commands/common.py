"""Pieces shared by the verbs: common flags, output helpers, connecting a client."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any, Callable

#: Exit codes of the client verbs (rpc, events, session): see the package docstring.
EXIT_REFUSED = 1
EXIT_NO_DAEMON = 3
#: ``session send --wait --on-permission exit``: the turn waits for an answer (its id on stdout).
EXIT_NEEDS_ANSWER = 5


def documented_action(actions: argparse._SubParsersAction, name: str, summary: str, example: str, codes: str,
                      description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with an example and its exit codes (``2 bad usage``
    is added: every verb has it)."""
    return actions.add_parser(name, help=summary, description=description or summary[:1].upper() + summary[1:] + ".",
                              epilog=f"example:\n  {example}\n\nexit codes: {codes}; 2 bad usage.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--profile``: which daemon (``resolve_profile`` turns a profile into
    its data dir once the command line is parsed)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data-dir", metavar="DIR",
                       help="daemon data directory (default: the profile's; for the default profile "
                            "$CHEETAHCLAWS_HOME or ~/.cheetahclaws)")
    where.add_argument("--profile", metavar="NAME",
                       help="a daemon of its own with its own data dir, socket, token, logs and service "
                            "(default: $CHEETAHCLAWS_PROFILE or 'default'; others live in "
                            "~/.cheetahclaws/profiles/NAME)")


def resolve_profile(args: argparse.Namespace) -> None:
    """Give ``args.data_dir`` the profile's data dir unless ``--data-dir`` named one, and
    ``args.profile`` the profile in force (None with an explicit ``--data-dir``); a bad name
    (flag or ``$CHEETAHCLAWS_PROFILE``) is a usage error."""
    if not hasattr(args, "data_dir"):
        return
    from cc_daemon import profiles

    try:
        if args.data_dir is None:
            args.profile = profiles.checked(args.profile) if args.profile else profiles.current()
            args.data_dir = str(profiles.data_dir_of(args.profile))
    except profiles.BadProfileName as exc:
        fail(str(exc), 2)


def add_connection(parser: argparse.ArgumentParser) -> None:
    """Flags of verbs that talk to a running daemon."""
    add_data_dir(parser)
    parser.add_argument("--address", metavar="URL", help="unix:///path.sock or tcp://HOST:PORT "
                        "(default: the running daemon's discovery file)")
    parser.add_argument("--token-path", metavar="PATH", help="bearer token file for a TCP daemon")


def add_client(parser: argparse.ArgumentParser) -> None:
    """Flags of the client verbs (rpc, events, session): the connection, and who we are."""
    add_connection(parser)
    parser.add_argument("--client-kind", metavar="KIND", default="cli",
                        help="the client kind to present (default cli); each kind keeps its own client id, "
                             "so a permission request raised as one kind cannot be answered as another")


def connect(args: argparse.Namespace):
    """A client for the daemon the connection flags name, as ``--client-kind``."""
    # Imported here: requests costs ~100 ms, which `serve` and `--help` should not pay.
    from cc_daemon.client import KIND_RE, Client

    if not KIND_RE.match(args.client_kind):
        fail(f"--client-kind must be 1-32 letters, digits, '_', '-' or '.': {args.client_kind!r}", 2)

    token = None
    if getattr(args, "token_path", None):
        try:
            with open(args.token_path, encoding="ascii") as handle:
                token = handle.read().strip()
        except OSError as exc:
            fail(f"cannot read token file {args.token_path}: {exc.strerror}", 2)
    return Client.connect(args.address, token=token, data_dir=args.data_dir, kind=args.client_kind)


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"cheetahclaws: {message}\n")
    raise SystemExit(code)


def client_verb(run: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """Wrap a verb that talks to the daemon: a failure becomes a message on stderr and an
    exit code (3 when no daemon answers, 1 when it refused), never a traceback."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from cc_daemon.client import DaemonError, NoAnswer, NotRunning, RpcCallError

        try:
            return int(run(args) or 0)
        except (NotRunning, NoAnswer) as exc:
            sys.stderr.write(f"cheetahclaws: {exc}\n")
            return EXIT_NO_DAEMON
        except RpcCallError as exc:
            print_rpc_error(exc.code, exc.message, exc.data)
            return EXIT_REFUSED
        except DaemonError as exc:
            sys.stderr.write(f"cheetahclaws: {exc}\n")
            return EXIT_REFUSED

    return wrapper


def print_rpc_error(code: Any, message: Any, data: Any = None) -> None:
    """A JSON-RPC error on stderr: its code and message, then its data as JSON."""
    sys.stderr.write(f"error {code}: {message}\n")
    if data is not None:
        sys.stderr.write(f"data: {json.dumps(data, indent=2, ensure_ascii=False)}\n")


def number_option(convert: Callable[[str], Any], accept: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse ``type`` that converts and checks a number, failing with one readable line."""
    noun = "an integer" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{rule}: {text}")
        return value
    return parse


positive_int = number_option(int, lambda value: value > 0, "must be positive")
positive_float = number_option(float, lambda value: value > 0, "must be positive")  # also refuses nan
non_negative_int = number_option(int, lambda value: value >= 0, "must be 0 or more")
