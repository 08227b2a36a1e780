"""Command-line latency: how long a one-shot ``cheetahclaws rpc system.ping`` takes against a
running daemon, as a ratio to a bare interpreter start (and to ``curl`` where it exists).

Owns: timing whole processes, alternated run by run so that the machine's state at any
moment weighs on every command alike, and the medians. Scripts and shell prompts call the
CLI in loops, so its floor is the interpreter's start: the target is at most 4x that.

Must not: start the daemon itself (``servers`` does) or judge the numbers (``report`` does).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .servers import Server


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall-clock seconds of one run of ``command``, which must succeed."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return elapsed


def commands(server: Server, source: Path) -> dict[str, list[str]]:
    address = server.target.url
    found = {"bare_python": [sys.executable, "-c", "pass"],
             "cli_rpc_ping": [sys.executable, "-m", "cc_daemon", "rpc", "system.ping", "--address", address,
                              "--data-dir", str(server.workdir / "data")]}
    curl = shutil.which("curl")
    if curl and address.startswith("unix://"):
        found["curl"] = [curl, "-s", "--fail", "--unix-socket", address[len("unix://"):], "-H",
                         "Cheetahclaws-Api-Version: 0", "-d", '{"jsonrpc":"2.0","method":"system.ping","id":1}',
                         "http://localhost/rpc"]
    return found


def measure(server: Server, source: Path, runs: int) -> dict[str, float]:
    """Median milliseconds of each command over ``runs`` alternated runs (one warm-up each)."""
    env = {**os.environ, "HOME": str(server.workdir)}  # never the real home's client ids
    found = commands(server, source)
    samples: dict[str, list[float]] = {name: [] for name in found}
    for run in range(runs + 1):
        for name, command in found.items():
            elapsed = timed(command, source, env)
            if run:  # the first round warms the page cache for all of them
                samples[name].append(elapsed * 1000)
    return {name: round(statistics.median(values), 1) for name, values in samples.items()}
