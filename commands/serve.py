"""``cheetahclaws serve``: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from .common import add_data_dir, fail, positive_float, positive_int

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "serve", help="run the daemon in the foreground",
        description="Run the daemon in the foreground until SIGTERM, Ctrl-C or system.shutdown.",
        epilog="examples:\n  cheetahclaws serve --listen tcp://127.0.0.1:8765 --print-token\n"
               "  cheetahclaws serve --listen unix://$HOME/.cheetahclaws/run/daemon.sock "
               "--listen tcp://127.0.0.1:8765   # both: terminals and a browser\n\n"
               "exit codes: 0 stopped cleanly (SIGTERM, Ctrl-C, system.shutdown, daemon stop); 2 bad usage, or "
               "cannot start (address in use, another daemon on the data dir, an unsafe path: the message "
               "names it and the fix).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", metavar="URL", action="append",
                        help="unix:///abs/path.sock or tcp://HOST:PORT (port 0 picks a free port); give it "
                             "again to listen on more than one address; default: unix://<data-dir>/run/daemon.sock")
    add_data_dir(parser)
    parser.add_argument("--token-path", metavar="PATH", help="bearer token file (default <data-dir>/daemon_token)")
    parser.add_argument("--print-token", action="store_true", help="print the TCP bearer token at start")
    parser.add_argument("--heartbeat-s", type=positive_float, default=15.0, metavar="S",
                        help="SSE comment heartbeat after S seconds without an event (default 15)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--no-audit", action="store_true", help="do not write logs/auth.jsonl")
    parser.add_argument("--unauthenticated-metrics", action="store_true",
                        help="serve /healthz, /readyz and /metrics without authentication")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback TCP address (there is no TLS)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="browser origin allowed to call the daemon (repeatable)")
    parser.add_argument("--event-buffer", type=positive_int, default=65536, metavar="N",
                        help="recent events kept in memory for the live tail (default 65536); "
                             "older ones are read from the database")
    parser.add_argument("--event-buffer-mb", type=positive_float, default=16.0, metavar="M",
                        help="and at most M megabytes of them (default 16; the newest event is always kept)")
    # Literal defaults (cc_daemon.eventlog's) so that parsing the command line imports no SQLite.
    parser.add_argument("--retention-events", type=positive_int, default=1_000_000, metavar="N",
                        help="events kept in <data-dir>/daemon.db for replay (default 1000000)")
    parser.add_argument("--retention-days", type=positive_float, default=7.0, metavar="D",
                        help="drop stored events older than D days (default 7)")
    parser.add_argument("--event-log-sync", choices=("normal", "full"), default="normal",
                        help="normal: a published event survives a crash or kill -9 of the daemon; "
                             "full: also power loss, at one fsync per group commit (default normal)")
    parser.add_argument("--max-body-bytes", type=positive_int, metavar="N",
                        help="largest accepted request body (default 1 MiB; larger gets 413)")
    parser.add_argument("--max-connections", type=positive_int, metavar="N",
                        help="open connections served at once (default 512; beyond it 503)")
    parser.add_argument("--max-sessions", type=positive_int, default=8, metavar="N",
                        help="agent sessions running at once (default 8; session.create refuses more)")
    parser.add_argument("--max-queued-turns", type=positive_int, default=16, metavar="N",
                        help="turns waiting per session behind the running one (default 16; session.send "
                             "refuses more)")
    parser.set_defaults(run=run)


#: How often the main thread wakes to run pending signal handlers.
SIGNAL_CHECK_S = 0.2


def options_from(args: argparse.Namespace):
    from cc_daemon.daemon import DaemonOptions
    from cc_daemon.storage import DataDir
    from cc_daemon.transport.addresses import AddressError, ListenAddress
    from cc_daemon.transport.servers import Limits

    data_dir = DataDir.resolve(args.data_dir)
    try:
        listens = [ListenAddress.parse(text) for text in args.listen or ()] or [ListenAddress.unix(data_dir.default_socket)]
    except AddressError as exc:
        fail(str(exc), 2)
    if len(set(listens)) < len(listens):
        fail("the same --listen address is given twice", 2)
    return DaemonOptions(
        listen=listens[0], also_listen=tuple(listens[1:]), data_dir=data_dir, token_path=Path(args.token_path).absolute() if args.token_path else None,
        heartbeat_s=args.heartbeat_s, audit=not args.no_audit, unauthenticated_metrics=args.unauthenticated_metrics,
        allow_remote=args.allow_remote, allow_origins=tuple(args.allow_origin), event_buffer=args.event_buffer,
        event_buffer_mb=args.event_buffer_mb,
        retention_events=args.retention_events, retention_days=args.retention_days,
        event_log_sync=args.event_log_sync,
        limits=Limits(**{name: value for name, value in (("max_body_bytes", args.max_body_bytes),
                                                           ("max_connections", args.max_connections))
                         if value is not None}),
        log_level=args.log_level, max_sessions=args.max_sessions,
        max_queued_turns=args.max_queued_turns)


def run(args: argparse.Namespace) -> int:
    from cc_daemon.daemon import Daemon, StartupError
    from cc_daemon.transport.servers import SocketInUse

    options = options_from(args)
    if args.profile is not None:
        # Through the daemon's own environment, every runtime it starts learns its profile,
        # so the agent's own cheetahclaws calls reach this daemon and not the default one.
        from cc_daemon.profiles import PROFILE_ENV

        os.environ[PROFILE_ENV] = args.profile
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    if args.unauthenticated_metrics:
        print("warning: /healthz, /readyz and /metrics are served without authentication", file=sys.stderr)
    for address in daemon.addresses:
        if address.scheme == "tcp" and not address.is_loopback():
            print(f"warning: listening on non-loopback {address.url()} without TLS", file=sys.stderr)
    print(f"cc_daemon listening on {' and '.join(a.url() for a in daemon.addresses)} (pid {os.getpid()})",
          flush=True)
    if args.print_token and daemon.tokens is not None:
        print(f"token: {options.resolved_token_path.read_text().strip()}", flush=True)
    # Timed waits: Python runs signal handlers in the main thread only, and a SIGTERM the
    # kernel hands to another thread merely sets a flag that an untimed wait never checks.
    while not daemon.wait(SIGNAL_CHECK_S):
        pass
    daemon.stop()
    return 0
