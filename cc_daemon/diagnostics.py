"""What ``daemon doctor`` checks about one data dir, each finding with its explanation and fix.

Owns: the checks (data dir ownership and modes, the token file, stale pid / discovery /
socket files, the socket's directory, SQLite's integrity, free disk, the runtimes on
``PATH``, whether the daemon answers and how fast) and what each finding means: ``ok``,
``info`` (worth knowing, nothing wrong: no daemon running, a runtime not installed),
``warning`` or ``problem`` (something to fix; the fix says how). Each check reuses the rule
the daemon itself applies (``safe_paths``, ``discovery``, ``database``, the runtime
registry), so doctor and ``serve`` never disagree.

Must not: change anything (it only reads, so it is safe while the daemon runs), print a
token, or know about argparse or the service manager (``commands.daemon_doctor`` adds that).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import discovery
from .safe_paths import UnsafePath, check_dir, read_private
from .storage import DataDir, InstanceLock, read_json

OK, INFO, WARNING, PROBLEM = "ok", "info", "warning", "problem"
#: Below this much free space the event log is close to refusing publishes (RFC 0003 §10):
#: a WAL checkpoint needs room, and a burst of runtime output is megabytes.
DISK_PROBLEM_BYTES = 100 * 1024 * 1024
#: Below this, worth a warning: at the default retention (a million events, a few hundred
#: bytes each) the database alone can reach several hundred megabytes.
DISK_WARNING_BYTES = 1024 * 1024 * 1024
#: How long a daemon may take to answer a ping before doctor calls it slow.
SLOW_PING_MS = 250.0


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def run_checks(layout: DataDir, ping: Callable[[discovery.Discovered], float]) -> list[Finding]:
    """Every check of ``layout``; ``ping`` answers a running daemon's round trip in ms (or raises)."""
    found = discovery.parse(read_json(layout.discovery_file), layout.default_token_file)
    running = InstanceLock(layout.lock_file).is_held_elsewhere()
    findings = list(check_directories(layout))
    findings.append(check_token(found.token_path if found and found.token_path else layout.default_token_file))
    findings += check_stale_files(layout, found, running)
    findings.append(check_socket_directory(layout, found))
    findings.append(check_database_file(layout))
    findings.append(check_disk(layout.root))
    findings += check_runtimes()
    findings.append(check_answers(found, running, ping))
    return findings


def check_directories(layout: DataDir) -> Iterator[Finding]:
    if not layout.root.exists():
        yield Finding("data dir", INFO, f"{layout.root} does not exist yet", "cheetahclaws serve creates it (mode 0700)")
        return
    for path in (layout.root, layout.run_dir, layout.logs_dir, layout.root / "sessions"):
        if path != layout.root and not path.exists():
            continue
        try:
            check_dir(path)
        except UnsafePath as exc:
            yield Finding(f"directory {path.name}", PROBLEM, f"{path}: {exc.problem}", exc.fix)
            continue
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        yield Finding(f"directory {path.name}", OK, f"{path}: yours, mode {mode:04o}")


def check_token(path: Path) -> Finding:
    if not path.exists() and not path.is_symlink():
        return Finding("token file", INFO, f"no token at {path}: a daemon with a TCP listener creates it")
    try:
        token = read_private(path, secret=True).strip()
    except UnsafePath as exc:
        return Finding("token file", PROBLEM, f"{path}: {exc.problem}", exc.fix)
    except OSError as exc:
        return Finding("token file", PROBLEM, f"cannot read {path}: {exc.strerror}", f"check {path}")
    if len(token) < 32:
        return Finding("token file", PROBLEM, f"{path} holds {len(token)} characters, too short to be a token",
                       "cheetahclaws daemon rotate-token")
    return Finding("token file", OK, f"{path}: yours, mode 0600, {len(token)} characters")


def check_stale_files(layout: DataDir, found: discovery.Discovered | None, running: bool) -> list[Finding]:
    if running:
        return [Finding("stale files", OK, "a daemon holds the data dir's lock: its files are current")]
    stale = [path for path in (layout.discovery_file, layout.pid_file) if path.exists()]
    socket_path = unix_socket_of(layout, found)
    if socket_path is not None and socket_path.exists() and not answers(socket_path):
        stale.append(socket_path)
    if not stale:
        return [Finding("stale files", OK, "no daemon runs and none left files behind")]
    dead = f" (pid {found.pid} is not running)" if found is not None and found.pid else ""
    return [Finding("stale files", WARNING, f"no daemon runs, but {path} is left from one that ended{dead}",
                    f"harmless to the next serve, which removes it; to clean up now: rm {path}") for path in stale]


def check_socket_directory(layout: DataDir, found: discovery.Discovered | None) -> Finding:
    socket_path = unix_socket_of(layout, found) or layout.default_socket
    directory = socket_path.parent
    if not directory.exists():
        return Finding("socket directory", INFO, f"{directory} does not exist yet", "serve creates it")
    try:
        check_dir(directory)
    except UnsafePath as exc:
        return Finding("socket directory", PROBLEM, f"{directory}: {exc.problem}", exc.fix)
    return Finding("socket directory", OK, f"{directory}: yours, nobody else can replace the socket")


def check_database_file(layout: DataDir) -> Finding:
    from .database import check_database

    if not layout.database.exists():
        return Finding("database", INFO, f"no {layout.database} yet: the first serve creates it")
    problems = check_database(layout.database)
    if problems:
        return Finding("database", PROBLEM, f"{layout.database}: " + "; ".join(problems),
                       "stop the daemon and move the file aside (a new one is created at the next start; the "
                       "events in it are lost), or restore a backup")
    size = layout.database.stat().st_size
    return Finding("database", OK, f"{layout.database}: SQLite's integrity check passed ({size / 1e6:.1f} MB)")


def check_disk(root: Path) -> Finding:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / 1e9:.2f} GB free on the file system of {probe}"
    if free < DISK_PROBLEM_BYTES:
        return Finding("free disk", PROBLEM, detail + ": the event log will soon refuse new events",
                       "free some space; events are kept until then and nothing acknowledged is lost")
    if free < DISK_WARNING_BYTES:
        return Finding("free disk", WARNING, detail, "free some space, or lower serve's retention_events")
    return Finding("free disk", OK, detail)


def check_runtimes() -> list[Finding]:
    from .runtimes.registry import RuntimeRegistry

    findings = []
    for info in RuntimeRegistry().describe(dict(os.environ)):
        if info.available:
            found = " ".join(part for part in (info.version, info.path) if part) or "available"
            findings.append(Finding(f"runtime {info.name}", OK, found))
        else:
            findings.append(Finding(f"runtime {info.name}", INFO, f"not available: {info.problem}"))
    return findings


def check_answers(found: discovery.Discovered | None, running: bool,
                  ping: Callable[[discovery.Discovered], float]) -> Finding:
    if not running:
        return Finding("daemon", INFO, "not running", "cheetahclaws serve (or install-service to keep one running)")
    if found is None:
        return Finding("daemon", PROBLEM, "a process holds the lock but wrote no usable discovery file",
                       "cheetahclaws daemon stop, then start it again")
    try:
        ms = ping(found)
    except Exception as exc:  # whatever the failure, it is the finding
        return Finding("daemon", PROBLEM, f"pid {found.pid} holds the lock but does not answer at "
                                          f"{found.address.url()}: {exc}", "cheetahclaws daemon stop, then start it")
    if ms > SLOW_PING_MS:
        return Finding("daemon", WARNING, f"pid {found.pid} answers at {found.address.url()} in {ms:.0f} ms: slow",
                       "cheetahclaws daemon status and its logs say what it is busy with")
    return Finding("daemon", OK, f"pid {found.pid} answers at {found.address.url()} in {ms:.1f} ms")


def unix_socket_of(layout: DataDir, found: discovery.Discovered | None) -> Path | None:
    if found is not None and found.address.scheme == "unix" and found.address.path:
        return Path(found.address.path)
    return layout.default_socket


def answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000
