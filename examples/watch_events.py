#!/usr/bin/env python3
"""Follow a cc_daemon's event stream with the Python client, one line per event.

Start a daemon (``cheetahclaws serve``), then in another terminal:

    python examples/watch_events.py                       # from now on, until Ctrl-C
    python examples/watch_events.py --since 0             # replay what the daemon kept first
    python examples/watch_events.py --type permission_request --type turn_done
    python examples/watch_events.py --session ses_0123456789abcdef

and make something happen, e.g. ``cheetahclaws rpc echo.ping hello=world``.

The daemon is found through its discovery file (``~/.cheetahclaws/daemon.json``, or under
``--data-dir`` / ``$CHEETAHCLAWS_HOME``), over the Unix socket or TCP alike. Stop and start
the daemon while this runs: the client reconnects with ``Last-Event-ID`` and prints every
event exactly once, in id order; a ``gap`` line says which ids the daemon no longer has.
Reconnection notices go to stderr, events to stdout.

Exit codes: 130 after Ctrl-C (it follows the stream until stopped), 1 the daemon refused us
or its event log was replaced, 3 no daemon running at start.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cc_daemon.client import Client, DaemonError, NotRunning

#: Longest ``data`` shown on one line; the rest is cut with an ellipsis.
DATA_CHARS = 100


def event_line(event: dict) -> str:
    """``id  time  type  session  data``: one event, one line."""
    event_id = event.get("id")
    when = time.strftime("%H:%M:%S", time.localtime(event.get("ts", time.time())))
    data = json.dumps(event.get("data", {}), ensure_ascii=False, separators=(",", ":"))
    if len(data) > DATA_CHARS:
        data = data[:DATA_CHARS - 1] + "\u2026"
    return (f"{event_id if event_id is not None else '-':>7} {when} {event['type']:<22} "
            f"{event.get('session_id') or '-':<22} {data}")


def notice(message: str) -> None:
    print(f"watch_events: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Print a cc_daemon's events as they happen, one line each.")
    parser.add_argument("--since", type=int, metavar="N",
                        help="first replay the retained events after id N (default: only new events)")
    parser.add_argument("--type", action="append", dest="types", metavar="T",
                        help="only events of type T (repeatable)")
    parser.add_argument("--session", metavar="S", help="only the events of session S")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the daemon's data dir (default: $CHEETAHCLAWS_HOME or ~/.cheetahclaws)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with Client.connect(data_dir=args.data_dir, kind="watch-events") as client:
            with client.events(args.since, types=args.types, session=args.session, on_reconnect=notice) as stream:
                for event in stream:
                    print(event_line(event), flush=True)
    except KeyboardInterrupt:
        return 130
    except NotRunning as exc:
        notice(f"{exc}\nstart one with: cheetahclaws serve")
        return 3
    except DaemonError as exc:  # refused (401, 426, ...) or the event log was replaced
        notice(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
