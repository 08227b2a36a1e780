"""The durable event log's costs: publishing (group commit vs a transaction per event, with
0/16/64 subscribers), the storage layer's own ceiling, and replaying ``since=0`` from disk.

Owns: measuring ``cc_daemon.eventlog`` in throw-away directories. Every measurement is one
JSON line on stdout as soon as it is taken; a table follows at the end (on stderr with
``--json``, so that stdout is JSON lines only). Nothing here asserts on speed.

Must not: be imported by the daemon or the tests.

Run from the repository root: ``python bench/bench_eventlog.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sseclient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cc_daemon import discovery  # noqa: E402
from cc_daemon.eventlog import SqliteEventStore  # noqa: E402
from cc_daemon.events import Event, EventBus, Originator, SubscriptionEnded  # noqa: E402
from cc_daemon.storage import DataDir  # noqa: E402

ORIGINATOR = Originator("k" * 64, "0123456789abcdef", "agent_runner")
#: A typical agent text chunk.
CHUNK = {"text": "Let me look at the failing test first, then the fixture it uses. ", "seq": 0}

records: list[dict] = []


def emit(record: dict) -> None:
    records.append(record)
    print(json.dumps(record), flush=True)


def progress(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def fresh_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ccd-bench-eventlog-"))


# -- publishing ---------------------------------------------------------------------------------
def subscriber(bus: EventBus, delivered: list[int], index: int) -> None:
    """What an SSE stream's thread does, minus the socket: read batches until the bus closes."""
    with bus.subscribe(0) as subscription:
        try:
            while True:
                delivered[index] += len(subscription.next_batch(1.0))
        except SubscriptionEnded:
            pass


def publish_run(events: int, publishers: int, subscribers: int, synchronous: str = "normal", batch: int = 1) -> dict:
    """``publishers`` threads publish ``events`` in total through the bus, each call waiting
    until its event is durable, as an RPC handler does; with ``batch`` > 1 each call is one
    ``publish_many`` of that many events (a runtime's burst of output)."""
    root = fresh_dir()
    store = SqliteEventStore(DataDir(root).database, synchronous=synchronous)
    bus = EventBus(store)
    delivered = [0] * subscribers
    readers = [threading.Thread(target=subscriber, args=(bus, delivered, i), daemon=True) for i in range(subscribers)]
    for reader in readers:
        reader.start()
    per_thread = events // publishers

    def publish() -> None:
        if batch == 1:
            for seq in range(per_thread):
                bus.publish("text_chunk", {**CHUNK, "seq": seq}, session_id="s_bench", originator=ORIGINATOR)
            return
        for start in range(0, per_thread, batch):
            bus.publish_many([("text_chunk", {**CHUNK, "seq": seq}) for seq in range(start, min(per_thread, start + batch))],
                             session_id="s_bench", originator=ORIGINATOR)

    threads = [threading.Thread(target=publish) for _ in range(publishers)]
    cpu, wall = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    published = per_thread * publishers
    deadline = time.monotonic() + 60
    while min(delivered, default=published) < published and time.monotonic() < deadline:
        time.sleep(0.01)
    _, health = store.health()
    bus.close()
    for reader in readers:
        reader.join(5)
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return {"events": published, "events_per_s": round(published / wall),
            "us_per_event": round(wall / published * 1e6, 1), "cpu_us_per_event": round(cpu / published * 1e6, 1),
            "events_per_commit": round(health["events_committed"] / max(1, health["commits"]), 1),
            "every_subscriber_got_all": all(count == published for count in delivered)}


def bench_publish(events: int) -> None:
    configurations = [("one transaction per event (a lone publisher)", 1, 1), ("group commit, 16 publishers", 16, 1),
                      ("group commit, 64 publishers", 64, 1),
                      ("group commit, batched: publish_many of 100, 4 publishers", 4, 100),
                      ("group commit, batched: publish_many of 1000, a lone publisher", 1, 1000)]
    for subscribers in (0, 16, 64):
        for mode, publishers, batch in configurations:
            progress(f"publish: {mode}, {subscribers} subscribers")
            # A lone unbatched publisher is slow; batched ones are fast enough for more events.
            count = events * 5 if batch > 1 else events // 4 if publishers == 1 else events
            emit({"bench": "eventlog_publish", "mode": mode, "publisher_threads": publishers, "batch": batch,
                  "subscribers": subscribers, "synchronous": "normal",
                  **publish_run(count, publishers, subscribers, batch=batch)})
    progress("publish: group commit, 16 publishers, synchronous=full")
    emit({"bench": "eventlog_publish", "mode": "group commit, 16 publishers", "publisher_threads": 16,
          "subscribers": 0, "synchronous": "full", **publish_run(events, 16, 0, "full")})


def bench_store_burst(events: int, burst: int = 1000) -> None:
    """The storage layer alone: bursts of ``burst`` appends, one durability wait per burst."""
    root = fresh_dir()
    store = SqliteEventStore(DataDir(root).database)
    now = time.time()
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, events, burst):
        for seq in range(start, min(events, start + burst)):
            store.append(Event(seq + 1, now, "text_chunk", {**CHUNK, "seq": seq}, "s_bench", ORIGINATOR))
        store.wait_visible(store.last_assigned_id())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _, health = store.health()
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    emit({"bench": "eventlog_store_burst", "burst": burst, "events": events,
          "events_per_s": round(events / wall), "us_per_event": round(wall / events * 1e6, 1),
          "cpu_us_per_event": round(cpu / events * 1e6, 1),
          "events_per_commit": round(health["events_committed"] / max(1, health["commits"]), 1)})


# -- replay ---------------------------------------------------------------------------------------
def populate(root: Path, events: int) -> None:
    store = SqliteEventStore(DataDir(root).database)
    now = time.time()
    for start in range(0, events, 5000):
        for seq in range(start, min(events, start + 5000)):
            store.append(Event(seq + 1, now, "text_chunk", {**CHUNK, "seq": seq}, "s_bench", ORIGINATOR))
        store.wait_visible(store.last_assigned_id())
    store.close()


def replay_in_process(db_path: str, cache_events: int) -> None:
    """Child process: replay since=0 through a bus subscription; print throughput and RSS."""
    store = SqliteEventStore(Path(db_path), cache_events=cache_events)
    bus = EventBus(store)
    last = store.last_id()
    rss_before = peak_rss_kb()
    started = time.perf_counter()
    received = 0
    with bus.subscribe(0) as subscription:
        while subscription.cursor < last:
            received += len(subscription.next_batch(1.0))
    elapsed = time.perf_counter() - started
    print(json.dumps({"received": received, "events_per_s": round(received / elapsed),
                      "peak_rss_before_kb": rss_before, "peak_rss_after_kb": peak_rss_kb()}))
    store.close()


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench_replay(events: int) -> None:
    root = fresh_dir()
    progress(f"replay: writing {events} events")
    populate(root, events)
    progress("replay: bus subscription since=0 in a fresh process")
    child = subprocess.run([sys.executable, __file__, "--replay-child", str(DataDir(root).database)],
                           capture_output=True, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    emit({"bench": "eventlog_replay", "path": "bus subscription", "events": events,
          "received": result["received"], "events_per_s": result["events_per_s"],
          "rss_growth_kb": result["peak_rss_after_kb"] - result["peak_rss_before_kb"]})
    progress("replay: GET /events?since=0 from a daemon on that data dir")
    emit({"bench": "eventlog_replay", "path": "HTTP /events?since=0 (unix socket)", "events": events,
          **replay_over_http(root, events)})
    shutil.rmtree(root, ignore_errors=True)


def replay_over_http(root: Path, events: int) -> dict:
    import requests_unixsocket

    process = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        layout = DataDir(root)
        base = discovery.parse(wait_for_discovery(layout.discovery_file, process),
                               layout.default_token_file).address.base_url()
        rss_before = rss_peak_of(process.pid)
        http = requests_unixsocket.Session()
        headers = {"Cheetahclaws-Api-Version": "0", "Last-Event-ID": "0"}
        started, received = time.perf_counter(), 0
        response = http.get(base + "/events", headers=headers, stream=True, timeout=(5, 30))
        for sse in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
            received += 1
            if int(sse.id) >= events:
                break
        elapsed = time.perf_counter() - started
        response.close()
        return {"received": received, "events_per_s": round(received / elapsed),
                "server_rss_growth_kb": rss_peak_of(process.pid) - rss_before}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def wait_for_discovery(path: Path, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.02)
    raise RuntimeError("daemon did not start")


def rss_peak_of(pid: int) -> int:
    """VmHWM (peak resident set) of ``pid`` in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


# -- report ---------------------------------------------------------------------------------------
def table() -> str:
    lines = ["| scenario | subscribers | sync | events/s | us/event (wall) | CPU us/event | events/commit |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        if r["bench"] == "eventlog_publish":
            lines.append(f"| publish: {r['mode']} | {r['subscribers']} | {r['synchronous']} | {r['events_per_s']:,} "
                         f"| {r['us_per_event']} | {r['cpu_us_per_event']} | {r['events_per_commit']} |")
        elif r["bench"] == "eventlog_store_burst":
            lines.append(f"| store alone: bursts of {r['burst']} appends | 0 | normal | {r['events_per_s']:,} "
                         f"| {r['us_per_event']} | {r['cpu_us_per_event']} | {r['events_per_commit']} |")
    lines += ["", "| replay since=0 | events | events/s | memory growth |", "|---|---|---|---|"]
    for r in records:
        if r["bench"] == "eventlog_replay":
            growth = r.get("rss_growth_kb", r.get("server_rss_growth_kb"))
            lines.append(f"| {r['path']} | {r['events']:,} | {r['events_per_s']:,} | {growth / 1024:.1f} MB peak RSS |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events per configuration")
    parser.add_argument("--json", action="store_true", help="stdout: JSON lines only (the table goes to stderr)")
    parser.add_argument("--replay-child", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay_child:
        replay_in_process(args.replay_child, cache_events=65536)
        return 0
    publish_events, replay_events = (4000, 20_000) if args.quick else (20_000, 100_000)
    bench_publish(publish_events)
    progress("store alone: bursts of 1000 appends")
    bench_store_burst(replay_events)
    bench_replay(replay_events)
    print(table(), file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
