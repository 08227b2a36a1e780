"""Sampling profiles of a server process while a benchmark runs, with py-spy.

Owns: running ``py-spy record`` against a pid for the length of one measurement
(collapsed-stack output, ``--nonblocking`` so the server is never paused) and
summarising the result as the functions with the most samples, on-CPU only (self) and
including callees (total).

Must not: install py-spy (``pip install py-spy``; it is a tool for whoever profiles, not a
dependency of the project) or change what is measured.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def available() -> bool:
    return shutil.which("py-spy") is not None


@contextmanager
def recording(pid: int, output: Path, seconds: float, rate: int = 200) -> Iterator[None]:
    """Sample ``pid`` for ``seconds`` into ``output`` (collapsed stacks) around the block."""
    output.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                            "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(output)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        try:
            _, errors = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, errors = spy.communicate()
        if spy.returncode != 0:
            print(f"# py-spy failed on pid {pid}: {errors.strip()[-300:]}", file=sys.stderr)


def top_frames(collapsed: Path, limit: int = 15) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(total samples, frames by self samples, frames by total samples) of a collapsed-stack file."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first entry names the thread
        samples += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return samples, own.most_common(limit), total.most_common(limit)


def summary(collapsed: Path, limit: int = 15) -> str:
    samples, own, total = top_frames(collapsed, limit)
    lines = [f"{collapsed}: {samples} samples (non-idle threads)", "  self:"]
    lines += [f"    {count / samples:6.1%}  {frame}" for frame, count in own]
    lines += ["  total (frame and its callees):"]
    lines += [f"    {count / samples:6.1%}  {frame}" for frame, count in total]
    return "\n".join(lines)
