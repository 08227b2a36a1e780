"""The web workbench with a long history: first render, scrolling and filtering in chromium.

Owns: filling a data dir with N events (a conversation's worth of turns, published in
bursts through the daemon's own event bus), starting ``cheetahclaws serve`` on it as a user
would, opening the page ``daemon open`` prints in headless chromium (Debian's), and timing
what the issue asks of it: first render (from the start of navigation until the history is
drawn), a jump to the top, middle and bottom of the raw event view, and applying a filter,
each until the second animation frame after it (when the result has been painted).
``python -m bench.webui --events 1000 100000`` prints one JSON line per history size.

Must not: assert on the figures (tests/test_browser.py holds the 1,000-event target).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from cc_daemon.daemon import Daemon, DaemonOptions
from cc_daemon.storage import DataDir
from cc_daemon.transport.addresses import ListenAddress

CHROMIUM = "/usr/bin/chromium"
SESSION = "ses_00bench00bench0"
#: One turn's events, as a runtime produces them (about 300 bytes each on the wire).
TURN = [("turn_queued", {"text": "write notes.txt remember the milk", "position": 0}),
        ("turn_started", {}),
        *[("text_chunk", {"text": f"Looking at the test suite, part {n}; "}) for n in range(6)],
        ("tool_start", {"tool_use_id": "tool-1", "tool": "Write", "input": {"file_path": "notes.txt"}}),
        ("tool_end", {"tool_use_id": "tool-1", "ok": True, "output": "wrote 18 bytes"}),
        ("turn_done", {"status": "completed"})]
#: Two animation frames: the change is drawn in the first and painted by the second.
UNTIL_PAINTED = "() => new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)))"


def fill(root: Path, count: int) -> None:
    """``count`` events in ``root``'s event log, through a daemon started for that only."""
    daemon = Daemon(DaemonOptions(listen=ListenAddress.unix(DataDir(root).default_socket), data_dir=DataDir(root)))
    daemon.start()
    try:
        published, turn = 0, 0
        while published < count:
            batch = []
            while len(batch) < 1000 and published + len(batch) < count:
                turn_id = f"turn_{turn:016x}"
                batch.extend((kind, {"turn_id": turn_id, **data}) for kind, data in TURN)
                turn += 1
            batch = batch[:count - published]
            daemon.bus.publish_many(batch, session_id=SESSION)
            published += len(batch)
    finally:
        daemon.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(root: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(root),
                                "--listen", f"tcp://127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if json.loads((root / "daemon.json").read_text()).get("pid") == process.pid:
                return process
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError("the daemon did not start")


def timed(page, action: str, *args) -> float:
    """Milliseconds from ``action`` (JavaScript run in the page) until it is painted."""
    return page.evaluate(f"""async (args) => {{
        const started = performance.now();
        ({action})(...args);
        await ({UNTIL_PAINTED})();
        return performance.now() - started;
    }}""", list(args))


def measure(browser, count: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ccd-webui-", dir="/tmp"))
    daemon = None
    try:
        started = time.perf_counter()
        fill(root, count)
        fill_s = time.perf_counter() - started
        daemon = serve(root, free_port())
        url = subprocess.run([sys.executable, "-m", "cc_daemon", "daemon", "open", "--data-dir", str(root)],
                             check=True, capture_output=True, text=True).stdout.strip()
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_selector("body[data-first-render-ms]", timeout=120_000)
        first_render = int(page.get_attribute("body", "data-first-render-ms"))
        page.wait_for_function(f"document.querySelector('#event-filter output').value === '{count} events'")
        scroll = "(fraction) => { const list = document.getElementById('event-list'); " \
                 "list.scrollTop = fraction * (list.scrollHeight - list.clientHeight); }"
        jumps = {f"scroll_to_{name}_ms": round(timed(page, scroll, fraction), 1)
                 for name, fraction in (("top", 0.0), ("middle", 0.5), ("bottom", 1.0))}
        filter_ms = timed(page, "(types) => { const input = document.querySelector('#event-filter [name=types]'); "
                                "input.value = types; input.dispatchEvent(new Event('input', {bubbles: true})); }",
                          "turn_done")
        rows = page.locator("#event-list .event-row").count()
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
        page.close()
        return {"bench": "webui", "events": count, "first_render_ms": first_render, **jumps,
                "filter_ms": round(filter_ms, 1), "rows_in_page": rows,
                "js_heap_mb": round(heap / 2**20, 1) if heap else None, "fill_s": round(fill_s, 1)}
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1000, 100_000], metavar="N",
                        help="history sizes to measure (default 1000 100000)")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        for count in args.events:
            print(json.dumps(measure(browser, count)), flush=True)
        browser.close()


if __name__ == "__main__":
    main()
