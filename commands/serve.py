"""``cheetahclaws serve``: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from . import settings
from .common import add_data_dir, fail


def add_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "serve", help="run the daemon in the foreground",
        description="Run the daemon in the foreground until SIGTERM, Ctrl-C or system.shutdown.",
        epilog="examples:\n  cheetahclaws serve --listen tcp://127.0.0.1:8765 --print-token\n"
               "  cheetahclaws serve --listen unix://$HOME/.cheetahclaws/run/daemon.sock "
               "--listen tcp://127.0.0.1:8765   # both: terminals and a browser\n\n"
               "exit codes: 0 stopped cleanly (SIGTERM, Ctrl-C, system.shutdown, daemon stop); 2 bad usage, or "
               "cannot start (address in use, another daemon on the data dir, an unsafe path: the message "
               "names it and the fix).\n\n"
               "Every setting below can also come from the environment or from <data-dir>/config.toml "
               "(a flag wins over the environment, which wins over the file): cheetahclaws daemon config "
               "shows each value in force and where it came from.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    settings.add_arguments(parser)
    parser.set_defaults(run=run)


#: How often the main thread wakes to run pending signal handlers.
SIGNAL_CHECK_S = 0.2


def options_from(args: argparse.Namespace):
    """The daemon's options from the command line, the environment and the config file."""
    return options_of(values_of(args), args)


def values_of(args: argparse.Namespace) -> dict:
    """Each setting's value in force (``settings``); a bad one is a usage error naming it."""
    from cc_daemon.storage import DataDir

    try:
        return {name: resolved.value
                for name, resolved in settings.resolve(args, os.environ, DataDir.resolve(args.data_dir).root).items()}
    except settings.SettingError as exc:
        fail(str(exc), 2)


def options_of(values: dict, args: argparse.Namespace):
    from cc_daemon.daemon import DaemonOptions
    from cc_daemon.storage import DataDir
    from cc_daemon.transport.addresses import AddressError, ListenAddress
    from cc_daemon.transport.servers import Limits

    data_dir = DataDir.resolve(args.data_dir)
    try:
        listens = [ListenAddress.parse(text) for text in values["listen"]] or [ListenAddress.unix(data_dir.default_socket)]
    except AddressError as exc:
        fail(str(exc), 2)
    if len(set(listens)) < len(listens):
        fail("the same listen address is given twice", 2)
    token_path = values["token_path"]
    return DaemonOptions(
        listen=listens[0], also_listen=tuple(listens[1:]), data_dir=data_dir,
        token_path=Path(token_path).expanduser().absolute() if token_path else None,
        heartbeat_s=values["heartbeat_s"], audit=not values["no_audit"],
        unauthenticated_metrics=values["unauthenticated_metrics"], allow_remote=values["allow_remote"],
        allow_origins=tuple(values["allow_origin"]), event_buffer=values["event_buffer"],
        event_buffer_mb=values["event_buffer_mb"], retention_events=values["retention_events"],
        retention_days=values["retention_days"], event_log_sync=values["event_log_sync"],
        limits=Limits(max_body_bytes=values["max_body_bytes"], max_connections=values["max_connections"]),
        log_level=values["log_level"], log_format=values["log_format"], max_sessions=values["max_sessions"], max_queued_turns=values["max_queued_turns"])


def run(args: argparse.Namespace) -> int:
    from cc_daemon.daemon import Daemon, StartupError
    from cc_daemon.transport.servers import SocketInUse

    values = values_of(args)
    options = options_of(values, args)
    if args.profile is not None:
        # Through the daemon's own environment, every runtime it starts learns its profile,
        # so the agent's own cheetahclaws calls reach this daemon and not the default one.
        from cc_daemon.profiles import PROFILE_ENV

        os.environ[PROFILE_ENV] = args.profile
    from cc_daemon import logs

    root = logging.getLogger()
    root.setLevel(getattr(logging, options.log_level.upper()))
    root.addHandler(logs.prepare(logging.StreamHandler(sys.stderr), options.log_format, options.log_level))
    daemon = Daemon(options)
    # Signals are routed before start-up, so a SIGTERM during start still stops cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        daemon.start()
    except (StartupError, SocketInUse) as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot start: {exc}", 2)
    if options.unauthenticated_metrics:
        print("warning: /healthz, /readyz and /metrics are served without authentication", file=sys.stderr)
    for address in daemon.addresses:
        if address.scheme == "tcp" and not address.is_loopback():
            print(f"warning: listening on non-loopback {address.url()} without TLS", file=sys.stderr)
    print(f"cc_daemon listening on {' and '.join(a.url() for a in daemon.addresses)} (pid {os.getpid()})",
          flush=True)
    if values["print_token"] and daemon.tokens is not None:
        print(f"token: {options.resolved_token_path.read_text().strip()}", flush=True)
    # Timed waits: Python runs signal handlers in the main thread only, and a SIGTERM the
    # kernel hands to another thread merely sets a flag that an untimed wait never checks.
    while not daemon.wait(SIGNAL_CHECK_S):
        pass
    daemon.stop()
    return 0
