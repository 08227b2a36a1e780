"""The benchmark runner: ``python -m bench [--quick]`` from the repository root.

Owns: the plan (which scenarios, how long: full or ``--quick``), starting the servers for
each scenario, running cc_daemon, the reference and the ceiling side by side in the same
run, printing every measurement as a JSON line on stdout as it is taken, and the final
tables and target verdicts (also written to ``--results``, e.g. bench/RESULTS.md).

Must not: assert anything (it reports); run as part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from . import cli, profile, report, servers, sse
from .loadgen import PING, HttpConnection, run_rpc
from .reference import DEFAULT_CACHE_DIR, ReferenceUnavailable, ensure_reference

BENCH_DIR = Path(__file__).resolve().parent
EVENTLOG_BENCH = BENCH_DIR / "bench_eventlog.py"
#: The paused reader gets bigger events and a small socket buffer so that kernel buffers
#: (up to 4 MB per socket here) cannot hide how the server treats a reader that stalls.
PAUSED_PAD_BYTES = 2048
PAUSED_RCVBUF = 4096
#: A cc_daemon log this small is pruned past the paused reader, so its exact ``gap`` path is exercised.
SMALL_RETENTION = 256


@dataclass(frozen=True)
class Plan:
    rpc_clients: tuple[int, ...]
    rpc_seconds: float
    rpc_warmup: float
    transports: tuple[str, ...]
    sse_subscribers: tuple[int, ...]
    sse_seconds: float
    paused_events: int
    idle_streams: tuple[int, ...]
    cold_runs: int
    eventlog_timeout_s: float


FULL = Plan(rpc_clients=(1, 4, 16, 64), rpc_seconds=4.0, rpc_warmup=0.5, transports=("tcp", "unix"),
            sse_subscribers=(1, 16, 64), sse_seconds=4.0, paused_events=6000, idle_streams=(64, 512),
            cold_runs=5, eventlog_timeout_s=300)
# The quick paused run is too short to overflow the reference's 4096-event queue.
QUICK = Plan(rpc_clients=(1, 16), rpc_seconds=1.0, rpc_warmup=0.3, transports=("tcp", "unix"),
             sse_subscribers=(1, 64), sse_seconds=1.5, paused_events=3000, idle_streams=(64, 512),
             cold_runs=3, eventlog_timeout_s=120)
SCENARIOS = ("rpc", "sse", "memory", "cold", "cli", "eventlog")


class Bench:
    """One run: the plan, the reference (if installable), the records so far."""

    def __init__(self, plan: Plan, reference: Path | None, client_procs: int | None, profile_dir: Path | None,
                 ccd_source: Path):
        self.plan = plan
        self.reference = reference
        self.ccd_source = ccd_source
        self.client_procs = client_procs
        self.profile_dir = profile_dir
        self.records: list[report.Record] = []

    def emit(self, record: report.Record) -> None:
        self.records.append(record)
        print(json.dumps(record, separators=(",", ":")), flush=True)

    @contextmanager
    def servers(self, *starters: Callable[[], servers.Server]) -> Iterator[list[servers.Server]]:
        with ExitStack() as stack:
            started = []
            for start in starters:
                server = start()
                stack.callback(server.stop)
                started.append(server)
            yield started

    def starters(self, transport: str, *, ceiling: bool = False, ccd_args: tuple[str, ...] = ()):
        found = [lambda: servers.start_cc_daemon(transport, *ccd_args, source=self.ccd_source)]
        if ceiling:
            found.append(lambda: servers.start_ceiling(transport))
        if self.reference is not None and transport == "tcp":  # the reference is started on TCP only
            found.append(lambda: servers.start_reference(self.reference))
        return found

    def profiled(self, server: servers.Server, name: str, seconds: float):
        if self.profile_dir is None or server.name != report.CCD:
            return nullcontext()
        return _ProfileThenSummarise(server.pid, self.profile_dir / f"{name}.txt", seconds)


class _ProfileThenSummarise:
    def __init__(self, pid: int, output: Path, seconds: float):
        self._recording = profile.recording(pid, output, seconds)
        self._output = output

    def __enter__(self) -> None:
        self._recording.__enter__()

    def __exit__(self, *exc_info) -> None:
        self._recording.__exit__(*exc_info)
        if self._output.exists():
            progress(profile.summary(self._output))


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# -- scenarios ------------------------------------------------------------------------------
def bench_rpc(bench: Bench) -> None:
    plan = bench.plan
    for transport in plan.transports:
        with bench.servers(*bench.starters(transport, ceiling=True)) as running:
            for clients in plan.rpc_clients:
                for keepalive in (True, False):
                    for server in running:  # interleaved, so drift on the machine hits all alike
                        progress(f"rpc {server.name} {transport} clients={clients} keep-alive={keepalive}")
                        with bench.profiled(server, f"rpc-{transport}-{clients}-{'ka' if keepalive else 'close'}",
                                            plan.rpc_warmup + plan.rpc_seconds):
                            result = run_rpc(server.target, clients, keepalive, plan.rpc_seconds, plan.rpc_warmup,
                                             processes=bench.client_procs, server_pid=server.pid)
                        bench.emit({"bench": "rpc", "server": server.name, "transport": transport,
                                    "keepalive": keepalive, "clients": clients, **result.summary()})


def bench_sse(bench: Bench) -> None:
    plan = bench.plan
    with bench.servers(*bench.starters("tcp")) as running:
        for subscribers in plan.sse_subscribers:
            for server in running:
                progress(f"sse {server.name} subscribers={subscribers}")
                with bench.profiled(server, f"sse-{subscribers}", plan.sse_seconds):
                    result = sse.run_fanout(server.target, subscribers, duration=plan.sse_seconds,
                                            processes=bench.client_procs, server_pid=server.pid)
                bench.emit({"bench": "sse", "server": server.name, **result.summary()})
        for server in running:
            paused_run(bench, server, "default settings")
    small_log = ("--retention-events", str(SMALL_RETENTION), "--event-buffer", str(SMALL_RETENTION))
    with bench.servers(*bench.starters("tcp", ccd_args=small_log)[:1]) as small:
        paused_run(bench, small[0], " ".join(small_log))


def paused_run(bench: Bench, server: servers.Server, variant: str) -> None:
    progress(f"sse {server.name} paused reader, {bench.plan.paused_events} events ({variant})")
    result = sse.run_fanout(server.target, 1, events=bench.plan.paused_events, rcvbuf=PAUSED_RCVBUF, pause_s=1.0,
                            pad_bytes=PAUSED_PAD_BYTES, server_pid=server.pid)
    bench.emit({"bench": "sse_paused", "server": server.name, "variant": variant, **result.summary()})


def bench_memory(bench: Bench) -> None:
    """RSS and threads idle, then holding N idle event streams; a fresh server per N, because a
    thread-per-stream server only notices a closed stream at its next heartbeat (15 s)."""
    starters = bench.starters("tcp")
    for index, _ in enumerate(starters):
        record: dict[str, Any] = {"bench": "memory", "subscriber_counts": list(bench.plan.idle_streams)}
        for count in bench.plan.idle_streams:
            with bench.servers(starters[index]) as (server,):
                progress(f"memory {server.name}: idle, then {count} idle event streams")
                idle_rss, idle_threads = idle_memory(server)
                record.setdefault("server", server.name)
                record.setdefault("idle_rss_kb", idle_rss)
                record.setdefault("idle_threads", idle_threads)
                try:
                    streams = sse.hold_idle_streams(server.target, count)
                except (OSError, sse.StreamRefused) as exc:
                    record[f"error_{count}"] = f"{type(exc).__name__}: {exc}"
                    continue
                try:
                    rss, threads = settled(server)
                finally:
                    for sock in streams:
                        sock.close()
                record[f"rss_kb_{count}"], record[f"threads_{count}"] = rss, threads
                record[f"kb_per_subscriber_{count}"] = round((rss - idle_rss) / count, 1)
                record[f"threads_per_subscriber_{count}"] = round((threads - idle_threads) / count, 3)
        largest = max((c for c in bench.plan.idle_streams if f"rss_kb_{c}" in record), default=None)
        if largest:
            record["kb_per_subscriber"] = record[f"kb_per_subscriber_{largest}"]
            record["threads_per_subscriber"] = record[f"threads_per_subscriber_{largest}"]
        bench.emit(record)


def idle_memory(server: servers.Server) -> tuple[int, int]:
    """(RSS KB, threads) after 200 pings, so every code path a ping touches is loaded."""
    with HttpConnection(server.target) as conn:
        for _ in range(200):
            conn.call(PING)
    return settled(server)


def settled(server: servers.Server, timeout: float = 10.0) -> tuple[int, int]:
    """(RSS KB, threads) once the thread count stopped changing for 0.5 s."""
    deadline = time.monotonic() + timeout
    last = server.memory()
    stable_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - stable_since < 0.5:
        time.sleep(0.1)
        now = server.memory()
        if now[1] != last[1]:
            stable_since = time.monotonic()
        last = now
    return last


def bench_cold(bench: Bench) -> None:
    kinds: list[tuple[str, Callable[[], float]]] = [
        (report.CCD, lambda: servers.cold_start_cc_daemon(bench.ccd_source))]
    if bench.reference is not None:
        kinds.append((report.REFERENCE, lambda: servers.cold_start_reference(bench.reference)))
    times: dict[str, list[float]] = {name: [] for name, _ in kinds}
    for run in range(bench.plan.cold_runs):
        for name, measure in kinds:  # alternating, so a warm page cache helps both alike
            progress(f"cold start {name} run {run + 1}/{bench.plan.cold_runs}")
            times[name].append(measure() * 1000)
    for name, samples in times.items():
        bench.emit({"bench": "cold_start", "server": name, "median_ms": round(statistics.median(samples), 1),
                    "min_ms": round(min(samples), 1), "max_ms": round(max(samples), 1), "runs": len(samples)})


def bench_cli(bench: Bench) -> None:
    progress("cli: one-shot `rpc system.ping` against a bare interpreter start")
    server = servers.start_cc_daemon("unix", source=bench.ccd_source)
    try:
        medians = cli.measure(server, bench.ccd_source, runs=bench.plan.cold_runs * 4)
    finally:
        server.stop()
    bench.emit({"bench": "cli_latency", **{f"{name}_ms": value for name, value in medians.items()},
                "runs": bench.plan.cold_runs * 4})


def bench_eventlog(bench: Bench, quick: bool) -> None:
    """Run bench/bench_eventlog.py (owned elsewhere) if it exists; keep the JSON lines it prints."""
    if not EVENTLOG_BENCH.exists():
        bench.emit({"bench": "eventlog_skipped", "reason": f"{EVENTLOG_BENCH.name} is not there yet"})
        return
    attempts = [["--json", "--quick"], ["--json"], []] if quick else [["--json"], []]
    for args in attempts:
        progress(f"eventlog: {EVENTLOG_BENCH.name} {' '.join(args)}")
        try:
            done = subprocess.run([sys.executable, str(EVENTLOG_BENCH), *args], capture_output=True, text=True,
                                  cwd=BENCH_DIR.parent, timeout=bench.plan.eventlog_timeout_s)
        except subprocess.TimeoutExpired:
            bench.emit({"bench": "eventlog_skipped", "reason": f"no result within {bench.plan.eventlog_timeout_s} s"})
            return
        if done.returncode == 2 and "unrecognized arguments" in done.stderr:
            continue  # it does not take these options; try fewer
        break
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{") and _is_json(line)]
    if done.returncode != 0 or not lines:
        bench.emit({"bench": "eventlog_skipped",
                    "reason": f"exit {done.returncode}, {len(lines)} JSON lines: {done.stderr.strip()[-300:]}"})
        return
    for line in lines:
        bench.emit({"bench": "eventlog", **{k: v for k, v in line.items() if k != "bench"},
                    **({"eventlog_bench": line["bench"]} if "bench" in line else {})})


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# -- the run --------------------------------------------------------------------------------
def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every number."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine(revision: str | None) -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    describe = ["git", "rev-parse", "--short", revision] if revision else ["git", "describe", "--always", "--dirty"]
    commit = subprocess.run(describe, capture_output=True, text=True, cwd=BENCH_DIR.parent).stdout.strip()
    return {"bench": "machine", "nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "commit": commit or "?", "loadavg": load_average(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "cc_daemon side by side with the reference daemon (cheetahclaws 3.5.89) and a bare stdlib ceiling. "
        "Prints one JSON line per measurement on stdout, then tables and target verdicts."))
    parser.add_argument("--quick", action="store_true", help="short run (1-2 minutes) with fewer configurations")
    parser.add_argument("--only", default=",".join(SCENARIOS), metavar="LIST",
                        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})")
    parser.add_argument("--no-reference", action="store_true", help="do not install or run the reference")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the reference's virtualenv is kept (default bench/.cache)")
    parser.add_argument("--client-procs", type=int, default=None, metavar="N",
                        help="load-generator processes (default: one per core, fewer if fewer clients)")
    parser.add_argument("--cc-daemon-src", type=Path, default=servers.REPO_ROOT, metavar="DIR",
                        help="measure the cc_daemon of this checkout (default: this repository's working tree); "
                             "it is copied at start, so edits during the run change nothing")
    parser.add_argument("--cc-daemon-rev", default=None, metavar="REV",
                        help="measure the cc_daemon of this git revision of this repository instead (e.g. HEAD)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record cc_daemon with py-spy during each RPC and fan-out run (collapsed stacks in DIR)")
    parser.add_argument("--results", type=Path, default=None, metavar="FILE",
                        help="also write the tables as markdown to FILE (e.g. bench/RESULTS.md)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    if args.profile and not profile.available():
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    reference = None
    if not args.no_reference:
        try:
            reference = ensure_reference(args.cache_dir)
        except ReferenceUnavailable as exc:
            progress(f"reference skipped: {exc}")
    code = servers.snapshot_cc_daemon(args.cc_daemon_rev, args.cc_daemon_src.resolve())
    try:
        return run(args, plan, reference, code,
                   "python -m bench" + (" " + " ".join(sys.argv[1:] if argv is None else argv)).rstrip())
    finally:
        shutil.rmtree(code, ignore_errors=True)


def run(args: argparse.Namespace, plan: Plan, reference: Path | None, code: Path, command: str) -> int:
    bench = Bench(plan, reference, args.client_procs, args.profile, code)
    info = machine(args.cc_daemon_rev)
    measured = (f"revision {args.cc_daemon_rev}" if args.cc_daemon_rev
                else f"the working tree at {args.cc_daemon_src.resolve()}")
    bench.emit({**info, "cc_daemon": measured})
    if reference is None:
        bench.emit({"bench": "reference_skipped", "reason": "--no-reference" if args.no_reference else "not installable"})
    started = time.monotonic()
    chosen = args.only.split(",")
    scenarios: dict[str, Callable[[], None]] = {
        "rpc": lambda: bench_rpc(bench), "sse": lambda: bench_sse(bench), "memory": lambda: bench_memory(bench),
        "cold": lambda: bench_cold(bench), "cli": lambda: bench_cli(bench),
        "eventlog": lambda: bench_eventlog(bench, args.quick)}
    for name in SCENARIOS:
        if name in chosen:
            scenarios[name]()
    bench.emit({"bench": "finished", "loadavg": load_average(), "run_s": round(time.monotonic() - started)})
    header = (f"# cc_daemon benchmark results\n\n"
              f"- date: {info['date']}, commit {info['commit']}, run time {time.monotonic() - started:.0f} s\n"
              f"- machine: {info['nproc']} cores, {info['cpu']}, Linux {info['kernel']}, Python {info['python']}\n"
              f"- load average (1/5/15 min) at start {info['loadavg']}, at the end {load_average()}\n"
              f"- command: `{command}` (from the repository root)\n"
              f"- cc_daemon: {measured} (copied at start); reference: "
              f"{'cheetahclaws 3.5.89' if reference else 'not run'}; ceiling: bench/ceiling.py")
    text = report.markdown(bench.records, header)
    print("\n" + text)
    if args.results:
        args.results.write_text(text)
        progress(f"wrote {args.results}")
    return 0
