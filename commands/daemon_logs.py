"""``cheetahclaws daemon logs``: print the daemon's log, filtered by level or by request.

Owns: reading ``<data-dir>/logs/daemon.log`` in either line format of ``cc_daemon.logs``
(text or JSON), as *records* (a text record's traceback lines belong to it), keeping those at
a level or above and those of one request id, the last N of them, and following the file
as it grows and rotates.

Must not: write to the log or talk to the daemon (the file is all it reads).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from cc_daemon.storage import DataDir

from .common import add_connection, documented_action, fail

LEVELS = ("debug", "info", "warning", "error", "critical")
#: The start of a text record: ``2026-12-04 01:02:03,456 LEVEL logger[ [req ID]]: message``.
TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) \S+?(?: \[req (?P<req>[0-9a-f]+)\])?:")
#: How much of the log a filtered read scans, from its end: filters cannot count lines backwards.
SCAN_BYTES = 16 * 1024 * 1024


def add_action(actions: argparse._SubParsersAction, log_path: Path) -> None:
    logs = documented_action(actions, "logs", f"print the daemon log ({log_path})",
                             "cheetahclaws daemon logs -n 100 -f --level warning", "0 printed (with -f: until "
                             "Ctrl-C); 1 no log file")
    add_connection(logs)
    logs.add_argument("-n", "--lines", dest="n", type=int, default=50, metavar="N",
                      help="the last N records (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    logs.add_argument("--level", choices=LEVELS[:4], help="only records at this level or above")
    logs.add_argument("--request-id", metavar="ID", type=request_id,
                      help="only the records of one request (the X-Request-Id header, or data.request_id of a "
                           "-32603 error)")
    logs.set_defaults(run=run_logs)


def request_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{1,32}", text):
        raise argparse.ArgumentTypeError(f"a request id is hex digits, not {text!r}")
    return text


class Record:
    """One log record: its first line, its level and request id, and any lines that follow it."""

    def __init__(self, first: str):
        self.lines = [first]
        self.level, self.request_id = parse_head(first)

    def wanted(self, least: int, request: str | None) -> bool:
        return (self.level is None or LEVELS.index(self.level) >= least) and \
            (request is None or self.request_id == request)

    def text(self) -> str:
        return "".join(self.lines)


def parse_head(line: str) -> tuple[str | None, str | None]:
    """The level and request id of a record's first line (None, None for a stray line)."""
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return None, None
        level = str(entry.get("level", "")).lower()
        return (level if level in LEVELS else None), entry.get("request_id")
    match = TEXT_RECORD.match(line)
    if match is None:
        return None, None
    level = match["level"].lower()
    return (level if level in LEVELS else None), match["req"]


def records(lines: Iterable[str]) -> Iterator[Record]:
    """Lines grouped into records: a line that starts none (a traceback's) joins the last."""
    current: Record | None = None
    for line in lines:
        if current is not None and parse_head(line) == (None, None) and not line.startswith("{"):
            current.lines.append(line)
            continue
        if current is not None:
            yield current
        current = Record(line)
    if current is not None:
        yield current


def run_logs(args: argparse.Namespace) -> int:
    path = DataDir.resolve(args.data_dir).daemon_log
    if not path.exists():
        fail(f"no log at {path} (has the daemon run with this data dir?)", 1)
    least = LEVELS.index(args.level) if args.level else 0
    with open(path, "rb") as handle:
        lines = read_end(handle, args.n if args.level is None and args.request_id is None else None)
        kept = [record for record in records(lines) if record.wanted(least, args.request_id)]
        write(record.text() for record in kept[-args.n:] if args.n > 0)
        if args.follow:
            follow(path, handle, least, args.request_id)
    return 0


def read_end(handle, count: int | None, block: int = 8192) -> list[str]:
    """The last ``count`` lines of the file (None: its last ``SCAN_BYTES``), the file left at
    its end for ``follow``."""
    handle.seek(0, os.SEEK_END)
    position = handle.tell()
    data = b""
    while position > 0 and (data.count(b"\n") <= count if count is not None else len(data) < SCAN_BYTES):
        step = min(block if count is not None else 1 << 20, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
    handle.seek(0, os.SEEK_END)
    lines = data.decode("utf-8", "replace").splitlines(keepends=True)
    if position > 0:
        lines = lines[1:]  # cut mid-line
    return lines[-count:] if count is not None else lines


def follow(path: Path, handle, least: int, request: str | None) -> None:
    """Print records as they are appended; reopen when the log is rotated. A record is
    printed once the next one starts (its traceback may still be coming), or after a pause."""
    inode = os.fstat(handle.fileno()).st_ino
    pending: Record | None = None
    while True:
        raw = handle.readline()
        if raw:
            line = raw.decode("utf-8", "replace")
            if pending is not None and parse_head(line) == (None, None) and not line.startswith("{"):
                pending.lines.append(line)
                continue
            if pending is not None and pending.wanted(least, request):
                write([pending.text()])
            pending = Record(line)
            continue
        if pending is not None:
            if pending.wanted(least, request):
                write([pending.text()])
            pending = None
        time.sleep(0.2)
        try:
            if os.stat(path).st_ino != inode:
                handle.close()
                handle = open(path, "rb")
                inode = os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            pass


def write(texts: Iterable[str]) -> None:
    sys.stdout.write("".join(texts))
    sys.stdout.flush()
