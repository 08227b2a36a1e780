"""Pieces shared by the verbs: common flags, output helpers, connecting a client."""

from __future__ import annotations

import argparse
import sys



def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR",
                        help="daemon data directory (default: $CHEETAHCLAWS_HOME or ~/.cheetahclaws)")


def add_connection(parser: argparse.ArgumentParser) -> None:
    """Flags of verbs that talk to a running daemon."""
    add_data_dir(parser)
    parser.add_argument("--address", metavar="URL", help="unix:///path.sock or tcp://HOST:PORT "
                        "(default: the running daemon's discovery file)")
    parser.add_argument("--token-path", metavar="PATH", help="bearer token file for a TCP daemon")


def connect(args: argparse.Namespace, kind: str = "cli"):
    # Imported here: requests costs ~100 ms, which `serve` and `--help` should not pay.
    from cc_daemon.client import Client

    token = None
    if getattr(args, "token_path", None):
        try:
            with open(args.token_path, encoding="ascii") as handle:
                token = handle.read().strip()
        except OSError as exc:
            fail(f"cannot read token file {args.token_path}: {exc.strerror}", 2)
    return Client.connect(getattr(args, "address", None), token=token, data_dir=args.data_dir, kind=kind)


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"cheetahclaws: {message}\n")
    raise SystemExit(code)
