"""The servers under test, each started as its own process: cc_daemon, the reference, the ceiling.

Owns: spawning each server the way a user would (cc_daemon through ``python -m cc_daemon
serve``, the reference through its ``cheetahclaws serve``, the ceiling through
``python -m bench.ceiling``) in a throw-away directory, learning its address and token,
reading its RSS and thread count from ``/proc``, stopping it, and timing a cold start
(process spawn to the first successful ``system.ping``).

Must not: generate load (``bench.loadgen``, ``bench.sse``) or judge results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cc_daemon import discovery

from .loadgen import PING, PONG, HttpConnection, Target

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Live tail only: without ``since`` the reference replays its whole event table to every subscriber.
REFERENCE_LIVE_EVENTS = "/events?since=999999999999"
START_TIMEOUT_S = 30.0


class ServerFailed(RuntimeError):
    """A server did not start; the message carries the end of its output."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    target: Target
    workdir: Path
    log_paths: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> tuple[int, int]:
        """(RSS in KB, thread count) of the server process now."""
        values = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    values[key] = int(value.split()[0])
        return values["VmRSS"], values["Threads"]

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def short_workdir(prefix: str) -> Path:
    """A fresh directory under /tmp, short enough for a Unix socket path inside it."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _spawn(command: list[str], workdir: Path, env: dict[str, str] | None = None,
           cwd: Path = REPO_ROOT) -> subprocess.Popen:
    # Output goes to files, never to a pipe nobody reads (a full pipe would stall the server).
    with open(workdir / "stdout.log", "wb") as out, open(workdir / "stderr.log", "wb") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def _wait_for(what: str, process: subprocess.Popen, workdir: Path, probe: Callable[[], object],
              timeout: float = START_TIMEOUT_S, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            tail = (workdir / "stderr.log").read_text(errors="replace")[-2000:]
            raise ServerFailed(f"{what} (exit {process.returncode}): {tail.strip() or '(no output)'}")
        time.sleep(interval)


def stdout_line(workdir: Path, prefix: str) -> str | None:
    """The rest of the first stdout line starting with ``prefix``, once the server printed it."""
    try:
        text = (workdir / "stdout.log").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


# -- cc_daemon ----------------------------------------------------------------------------
def snapshot_cc_daemon(revision: str | None = None, source: Path = REPO_ROOT) -> Path:
    """A private, byte-compiled copy of cc_daemon's code to run every cc_daemon from.

    The working tree at ``source`` (default) or the git ``revision`` of this repository. Other
    people edit the tree while a run takes minutes; a copy keeps every server in one run on
    the same code. The copy's ``cc_daemon/commands`` links to its ``commands/`` (the editable
    install maps that package there), so the copy is importable with ``python -m cc_daemon``
    from its root. The caller removes it.
    """
    copy = Path(tempfile.mkdtemp(prefix="ccb-src-", dir="/tmp"))
    if revision:
        archive = subprocess.run(["git", "archive", "--format=tar", revision, "cc_daemon", "commands"],
                                 cwd=REPO_ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(copy)], input=archive.stdout, check=True)
    else:
        for package in ("cc_daemon", "commands"):
            shutil.copytree(source / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    link = copy / "cc_daemon" / "commands"
    if not link.exists():
        link.symlink_to(Path("..") / "commands", target_is_directory=True)
    # Compiled now, so that the first cold start does not pay for writing .pyc files.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(copy)], check=True, capture_output=True)
    return copy


def cc_daemon_command(workdir: Path, listen: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(workdir / "data"),
            "--listen", listen, *extra]


def start_cc_daemon(transport: str, *extra: str, source: Path = REPO_ROOT) -> Server:
    """``cc_daemon serve`` on a free TCP port or a Unix socket; address and token from the discovery file.

    ``python -m cc_daemon`` runs in ``source`` (a ``snapshot_cc_daemon`` copy), so that tree's
    ``cc_daemon`` package is the one imported.
    """
    workdir = short_workdir("ccb-")
    listen = f"unix://{workdir}/d.sock" if transport == "unix" else "tcp://127.0.0.1:0"
    process = _spawn(cc_daemon_command(workdir, listen, *extra), workdir, cwd=source)
    record_file = workdir / "data" / "daemon.json"

    def read_discovery():
        try:
            return json.loads(record_file.read_text())
        except (OSError, ValueError):
            return None

    # Parsed by today's reader, which also reads the records older revisions wrote (--cc-daemon-rev).
    found = discovery.parse(_wait_for("cc_daemon did not start", process, workdir, read_discovery),
                            workdir / "data" / "daemon_token")
    token = found.token_path.read_text().strip() if found.token_path else None
    target = Target("cc_daemon", found.address.url(), token).with_client_id()
    return Server("cc_daemon", process, target, workdir)


# -- the reference ------------------------------------------------------------------------
def reference_command(executable: Path, port: int) -> list[str]:
    return [str(executable), "serve", "--listen", f"tcp://127.0.0.1:{port}", "--print-token"]


def reference_env(workdir: Path) -> dict[str, str]:
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "CHEETAHCLAWS_HOME": str(home / ".cheetahclaws")}


def start_reference(executable: Path) -> Server:
    """``cheetahclaws serve --listen tcp://127.0.0.1:PORT --print-token`` under a throw-away HOME."""
    workdir = short_workdir("ccb-ref-")
    port = free_port()
    process = _spawn(reference_command(executable, port), workdir, reference_env(workdir))
    url = f"tcp://127.0.0.1:{port}"
    _wait_for("the reference did not start", process, workdir,
              lambda: stdout_line(workdir, "token:") and stdout_line(workdir, "cheetahclaws daemon listening on"))
    token = stdout_line(workdir, "token:")
    target = Target("reference", url, token, events_path=REFERENCE_LIVE_EVENTS)
    _wait_for("the reference does not answer system.ping", process, workdir, lambda: _pings(target))
    return Server("reference", process, target.with_client_id(), workdir)


# -- the ceiling --------------------------------------------------------------------------
def start_ceiling(transport: str) -> Server:
    workdir = short_workdir("ccb-ceil-")
    listen = f"unix://{workdir}/c.sock" if transport == "unix" else "tcp://127.0.0.1:0"
    process = _spawn([sys.executable, "-m", "bench.ceiling", "--listen", listen], workdir)
    url = _wait_for("the ceiling did not start", process, workdir, lambda: stdout_line(workdir, "listening"))
    return Server("ceiling", process, Target("ceiling", url), workdir)


# -- cold start ---------------------------------------------------------------------------
def _pings(target: Target) -> bool:
    try:
        with HttpConnection(target, timeout=2.0) as conn:
            response = conn.call(PING)
    except OSError:
        return False
    return response.status == 200 and PONG in response.body


def cold_start(name: str, command: Callable[[Path, int], list[str]], env: Callable[[Path], dict[str, str]],
               token_prefix: str, cwd: Path = REPO_ROOT) -> float:
    """Seconds from spawning ``serve`` to its first successful ``system.ping`` over TCP.

    Both daemons are started the same way: a fixed free port, ``--print-token``, the token
    read from stdout, then pings until one succeeds (polled every 2 ms).
    """
    workdir = short_workdir("ccb-cold-")
    port = free_port()
    started = time.perf_counter()
    process = _spawn(command(workdir, port), workdir, env(workdir), cwd)
    try:
        def answered():
            token = stdout_line(workdir, token_prefix)
            return token and _pings(Target(name, f"tcp://127.0.0.1:{port}", token))

        _wait_for(f"{name} did not answer system.ping", process, workdir, answered)
        return time.perf_counter() - started
    finally:
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


def cold_start_cc_daemon(source: Path = REPO_ROOT) -> float:
    return cold_start("cc_daemon", lambda w, port: cc_daemon_command(w, f"tcp://127.0.0.1:{port}", "--print-token"),
                      lambda w: {}, "token:", source)


def cold_start_reference(executable: Path) -> float:
    return cold_start("reference", lambda w, port: reference_command(executable, port), reference_env, "token:")
