"""``cheetahclaws daemon status | stop | logs | rotate-token | doctor | list-profiles | open | config | install-service | uninstall-service``: manage a daemon and its data."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from cc_daemon import discovery
from cc_daemon.storage import DataDir, InstanceLock, read_json

from . import daemon_config, daemon_doctor, daemon_logs, daemon_open, daemon_service
from .common import add_connection, documented_action as action, fail

# LSB init-script status codes.
RUNNING, DEAD_WITH_PIDFILE, NOT_RUNNING, UNKNOWN = 0, 1, 3, 4
#: The data dir as help texts name it, so that they show the paths DataDir gives.
HELP_DATA_DIR = DataDir(Path("<data-dir>"))


def add_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("daemon", help="manage a daemon (status, stop, logs, rotate-token, doctor, open, config, services, profiles)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    status = action(actions, "status", "is the daemon running? (LSB status codes)",
                    "cheetahclaws daemon status --json",
                    f"{RUNNING} running and answering; {DEAD_WITH_PIDFILE} not running, but a discovery file "
                    f"names a dead pid; {NOT_RUNNING} not running; {UNKNOWN} cannot tell (a daemon holds the "
                    "lock but does not answer, or wrote no usable discovery file)")
    add_connection(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(run=run_status)

    stop = action(actions, "stop", "stop gracefully (system.shutdown, then SIGTERM, then SIGKILL)",
                  "cheetahclaws daemon stop --grace-s 10",
                  "0 stopped, or was not running; 1 still running after SIGKILL")
    add_connection(stop)
    stop.add_argument("--grace-s", type=float, default=10.0, metavar="S",
                      help="seconds to wait after each step before the next, harder one (default 10)")
    stop.set_defaults(run=run_stop)

    daemon_logs.add_action(actions, HELP_DATA_DIR.daemon_log)

    rotate = action(actions, "rotate-token", "replace the TCP bearer token (a running daemon uses the new one at once)",
                    "cheetahclaws daemon rotate-token --print-token",
                    "0 rotated (the output says whether a running daemon was told, or only the file changed "
                    "because none runs); 1 the running daemon did not rotate")
    add_connection(rotate)
    rotate.add_argument("--print-token", action="store_true", help="print the new token")
    rotate.set_defaults(run=run_rotate)

    daemon_doctor.add_action(actions)

    profiles = action(actions, "list-profiles", "list the profiles (each a daemon of its own) and whether each runs",
                      "cheetahclaws daemon list-profiles --json", "0 listed")
    profiles.add_argument("--json", action="store_true", help="print the list as JSON")
    profiles.set_defaults(run=run_list_profiles)

    daemon_open.add_action(actions)
    daemon_config.add_action(actions)
    daemon_service.add_actions(actions)


def daemon_info(args: argparse.Namespace) -> tuple[DataDir, discovery.Discovered | None, bool]:
    """The data dir, its discovery record (ours or the reference's), and whether a live daemon
    holds its lock."""
    layout = DataDir.resolve(args.data_dir)
    found = discovery.parse(read_json(layout.discovery_file), layout.default_token_file)
    alive = InstanceLock(layout.lock_file).is_held_elsewhere()
    return layout, found, alive


def run_list_profiles(args: argparse.Namespace) -> int:
    from cc_daemon import profiles

    rows = []
    for name in profiles.existing():
        layout = DataDir(profiles.data_dir_of(name))
        found = discovery.parse(read_json(layout.discovery_file), layout.default_token_file)
        running = InstanceLock(layout.lock_file).is_held_elsewhere()
        rows.append({"profile": name, "data_dir": str(layout.root), "running": running,
                     "pid": found.pid if found is not None and running else None,
                     "address": found.address.url() if found is not None and running else None,
                     "stale_discovery": found is not None and not running,
                     "service": profiles.service_name(name)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = (f"running (pid {row['pid']}, {row['address']})" if row["running"]
                 else "not running" + (" (stale discovery file)" if row["stale_discovery"] else ""))
        print(f"{row['profile']:<16} {state:<60} {row['data_dir']}")
    return 0


def client_for(args: argparse.Namespace, found: discovery.Discovered):
    from cc_daemon.client import Client, Endpoint

    token_path = args.token_path or found.token_path
    token = Path(token_path).read_text().strip() if token_path else None
    endpoint = Endpoint.from_address(args.address or found.address.url(), token)
    return Client(endpoint, kind="cli", client_id=None, timeout=5.0)


def run_status(args: argparse.Namespace) -> int:
    layout, found, alive = daemon_info(args)
    if found is None and not alive:
        return report(args, NOT_RUNNING, {"running": False, "data_dir": str(layout.root)}, "not running")
    if not alive:
        return report(args, DEAD_WITH_PIDFILE, {"running": False, "stale_discovery": str(layout.discovery_file),
                                                "pid": found.pid},
                      f"not running (stale discovery file for dead pid {found.pid})")
    if found is None:
        return report(args, UNKNOWN, {"running": True}, "a daemon holds the lock but wrote no usable discovery file")
    from cc_daemon.client import DaemonError

    try:
        with client_for(args, found) as client:
            started = time.perf_counter()
            pong = client.call("system.ping")
            ping_ms = (time.perf_counter() - started) * 1000
            status = client.call("system.status")
    except (DaemonError, OSError) as exc:
        return report(args, UNKNOWN, {"running": True, "pid": found.pid, "error": str(exc)},
                      f"pid {found.pid} holds the lock but does not answer: {exc}")
    status.update(running=True, ping=pong, ping_ms=round(ping_ms, 2))
    others = [address for address in status.get("addresses", ()) if address != status["address"]]
    lines = [f"running: pid {status['pid']}, {status['transport']} {status['address']}"
             + (f" (also {', '.join(others)})" if others else ""),
             f"version: {status['version']} (api {status['api_version']}, python {status['python']})",
             f"uptime:  {format_duration(status['uptime_s'])}",
             f"ping:    {pong} in {ping_ms:.1f} ms",
             f"events:  last id {status['last_event_id']}, {status['subscribers']} subscribers",
             f"pending permission requests: {status['pending_permissions']}",
             f"sessions: {format_counts(status.get('sessions') or {})}",
             "runtimes:", *(f"  {describe_runtime(runtime)}" for runtime in status.get("runtimes", ()))]
    return report(args, RUNNING, status, "\n".join(lines))


def format_counts(per_state: dict[str, int]) -> str:
    return ", ".join(f"{count} {state}" for state, count in per_state.items()) or "none"


def describe_runtime(runtime: dict) -> str:
    if not runtime.get("available"):
        return f"{runtime['name']}: unavailable ({runtime.get('problem')})"
    found = " ".join(part for part in (runtime.get("version"), runtime.get("path")) if part)
    return f"{runtime['name']}: {found or 'available'}"


def report(args: argparse.Namespace, code: int, payload: dict, text: str) -> int:
    print(json.dumps(payload, indent=2, sort_keys=True) if args.json else text)
    return code


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def run_stop(args: argparse.Namespace) -> int:
    layout, found, alive = daemon_info(args)
    if not alive:
        print("not running")
        return 0
    lock = InstanceLock(layout.lock_file)
    pid = found.pid if found else None
    steps = [("system.shutdown", lambda: ask_shutdown(args, found)),
             ("SIGTERM", lambda: signal_pid(pid, signal.SIGTERM)),
             ("SIGKILL", lambda: signal_pid(pid, signal.SIGKILL))]
    for name, step in steps:
        if not step():
            continue
        if wait_until(lambda: not lock.is_held_elsewhere(), args.grace_s):
            print(f"stopped (pid {pid}, via {name})")
            return 0
    fail(f"pid {pid} is still running after SIGKILL", 1)
    return 1


def ask_shutdown(args: argparse.Namespace, found: discovery.Discovered | None) -> bool:
    from cc_daemon.client import DaemonError

    if found is None:
        return False
    try:
        with client_for(args, found) as client:
            client.call("system.shutdown")
        return True
    except (DaemonError, OSError) as exc:
        print(f"graceful shutdown request failed ({exc}); signalling", file=sys.stderr)
        return False


def signal_pid(pid: int | None, sig: signal.Signals) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return True  # already gone: the wait will see the lock released
    except PermissionError:
        return False


def wait_until(condition, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True


def run_rotate(args: argparse.Namespace) -> int:
    from cc_daemon.auth import TokenStore
    from cc_daemon.client import DaemonError

    layout, found, alive = daemon_info(args)
    token_path = Path(args.token_path or (found and found.token_path) or layout.default_token_file)
    rotated_live = False
    # A daemon with a TCP listener has a token, whichever address clients reach it by.
    if alive and found is not None and found.tcp_address() is not None:
        try:
            with client_for(args, found) as client:
                rotated_live = client.call("system.rotate_token")["rotated"]
        except (DaemonError, OSError) as exc:
            fail(f"the running daemon did not rotate its token: {exc}", 1)
    if rotated_live:
        print(f"token rotated: the running daemon uses the new one now ({token_path})")
    else:
        TokenStore(token_path).rotate()
        why = ("no daemon is running" if not alive
               else "the running daemon listens on a Unix socket and uses no token")
        print(f"token rotated in {token_path} only: {why}, so no daemon was told; "
              "a daemon started with this data dir will use it")
    if args.print_token:
        print(token_path.read_text().strip())
    return 0
