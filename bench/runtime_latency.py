"""From a runtime's write to a frontend's screen: latency and throughput of session output.

    python -m bench.runtime_latency [--sessions 16] [--subscribers 8] [--seconds 10]

A daemon started as a user starts it (``serve`` on a Unix socket, ``--max-sessions`` raised
to the session count) runs ``--sessions`` sessions of ``bench/paced_runtime.py`` (through
the ``custom`` runtime); ``--subscribers`` clients follow ``/events`` with the client
library, each in a thread of this process. Two phases:

- **paced**: every session writes 1000/sessions lines per second for ``--seconds``, 1,000
  lines per second in all (issue 15 item 8's load); the target is a p99 under 5 ms from
  the runtime's write to a subscriber's arrival, with nothing lost;
- **flat out**: every session writes ``--burst`` lines as fast as its pipe takes them; the
  figure is lines per second delivered to every subscriber, and again nothing lost.

Each line carries the CLOCK_MONOTONIC time of its write (one clock for all processes of a
Linux machine); a subscriber subtracts it from its own reading when the event arrives.
"Lost" counts the (session, line) pairs a subscriber never received, and "repeated" those it
received more than once. One JSON line per phase on stdout; nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cc_daemon.client import Client

RUNTIME = Path(__file__).with_name("paced_runtime.py")


class Subscriber(threading.Thread):
    """Follows ``/events`` until every session's turn is done; records each line's latency."""

    def __init__(self, client: Client, since: int, sessions: set[str]):
        super().__init__(daemon=True)
        self.stream = client.events(since, types=["text_chunk", "turn_done"], read_timeout=30)
        self.sessions = sessions
        self.latencies_ns: list[int] = []
        self.seen: dict[tuple[str, int], int] = {}
        self.last_arrival_ns = 0

    def run(self) -> None:
        waiting = set(self.sessions)
        for event in self.stream:
            arrived = time.monotonic_ns()
            if event.get("session_id") not in self.sessions:
                continue
            if event["type"] == "turn_done":
                waiting.discard(event["session_id"])
                if not waiting:
                    break
                continue
            for line in event["data"]["text"].splitlines():
                seq, stamp = line.split()
                key = (event["session_id"], int(seq))
                self.seen[key] = self.seen.get(key, 0) + 1
                self.latencies_ns.append(arrived - int(stamp))
            self.last_arrival_ns = arrived
        self.stream.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def run_phase(client: Client, readers: list[Client], sessions: list[str], name: str, count: int,
              rate: float) -> dict:
    status = client.call("system.status")
    subscribers = [Subscriber(reader, status["last_event_id"], set(sessions)) for reader in readers]
    for subscriber in subscribers:
        subscriber.start()
    # Every subscriber reads live before the first line is written, so no latency here
    # includes a connection's set-up or a replay.
    deadline = time.monotonic() + 30
    while client.call("system.status")["subscribers"] < status["subscribers"] + len(subscribers):
        if time.monotonic() > deadline:
            raise SystemExit("the subscribers did not connect within 30 s")
        time.sleep(0.01)
    started_ns = time.monotonic_ns()
    for session_id in sessions:
        client.call("session.send", session_id=session_id, text=f"{count} {rate}")
    for subscriber in subscribers:
        subscriber.join(120)
    expected = {(session_id, seq) for session_id in sessions for seq in range(count)}
    latencies = sorted(ns / 1e6 for subscriber in subscribers for ns in subscriber.latencies_ns)
    lost = sum(len(expected - subscriber.seen.keys()) for subscriber in subscribers)
    repeated = sum(1 for subscriber in subscribers for times in subscriber.seen.values() if times > 1)
    elapsed_s = (max(s.last_arrival_ns for s in subscribers) - started_ns) / 1e9
    return {"phase": name, "sessions": len(sessions), "subscribers": len(subscribers),
            "lines_written": len(expected), "lines_per_s_written": round(len(expected) / elapsed_s),
            "lines_per_s_delivered": round(len(latencies) / elapsed_s),
            "p50_ms": round(statistics.median(latencies), 3), "p99_ms": round(percentile(latencies, 0.99), 3),
            "max_ms": round(latencies[-1], 3), "lost": lost, "repeated": repeated}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--subscribers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the paced phase")
    parser.add_argument("--burst", type=int, default=2000, help="lines per session in the flat-out phase")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="ccd-latency-"))
    process = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(root),
                                "--listen", f"unix://{root}/d.sock", "--max-sessions", str(args.sessions)],
                               stdout=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()  # "cc_daemon listening on ..." once it accepts connections
        client = Client.connect(data_dir=root, kind="bench")
        sessions = [client.call("session.create", runtime="custom", cwd=str(root),
                                args=[sys.executable, str(RUNTIME)])["session_id"] for _ in range(args.sessions)]
        deadline = time.monotonic() + 30
        while any(client.call("session.get", session_id=s)["state"] != "idle" for s in sessions):
            if time.monotonic() > deadline:
                raise SystemExit("sessions did not become idle within 30 s")
            time.sleep(0.05)
        readers = [Client.connect(data_dir=root, kind=f"watcher{i}") for i in range(args.subscribers)]
        per_session_rate = 1000.0 / args.sessions
        for name, count, rate in (("paced", int(per_session_rate * args.seconds), per_session_rate),
                                  ("flat out", args.burst, 0.0)):
            print(json.dumps(run_phase(client, readers, sessions, name, count, rate)), flush=True)
        for each in (client, *readers):
            each.close()
    finally:
        process.terminate()
        process.wait(15)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
