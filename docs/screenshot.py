"""Take the README's picture of the web workbench: ``python docs/screenshot.py``.

Starts a daemon of its own (a throwaway data dir, a Unix socket and a free TCP port), opens
the address ``cheetahclaws daemon open`` prints in headless chromium (Debian's, as the tests
use), drives a demo session from the page up to a pending permission request, and saves
docs/workbench.png. Nothing of the user's home is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

OUTPUT = Path(__file__).resolve().parent / "workbench.png"
CHROMIUM = os.environ.get("CCD_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_daemon(root: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "cc_daemon", "serve", "--data-dir", str(root),
                                "--listen", f"unix://{root}/run/daemon.sock", "--listen", f"tcp://127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if json.loads((root / "daemon.json").read_text()).get("pid") == process.pid:
                return process
        except (OSError, ValueError):
            pass
        if process.poll() is not None:
            sys.exit(f"the daemon did not start: {process.stderr.read().decode()}")
        time.sleep(0.05)
    sys.exit("the daemon did not start within 20 s")


def page_address(root: Path) -> str:
    return subprocess.run([sys.executable, "-m", "cc_daemon", "daemon", "open", "--data-dir", str(root)],
                          check=True, capture_output=True, text=True).stdout.strip()


def drive(page, workdir: Path) -> None:
    for name in ("refactor", "docs-review"):
        page.fill("#create-form [name=cwd]", str(workdir))
        page.fill("#create-form [name=name]", name)
        page.click("#create-form button")
        expect(page.locator("#sessions tbody tr.selected", has_text=name)).to_have_count(1)
    for text in ("hello", "write notes.txt remember the milk", "run ls -la"):
        page.fill("#send-form textarea", text)
        page.press("#send-form textarea", "Enter")
        if text.startswith("write"):
            page.locator("#permissions .request.mine button.approve").click()
        turn = page.locator("#conversation .turn", has=page.locator(".message", has_text=text))
        if text.startswith("run"):
            expect(page.locator("#permissions .request.mine")).to_have_count(1)
        else:
            expect(turn.locator(".turn-end")).to_have_text("turn completed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to save it (default {OUTPUT})")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ccd-shot-", dir="/tmp"))
    workdir = root / "project"
    workdir.mkdir()
    daemon = start_daemon(root, free_port())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 960}, device_scale_factor=1)
            page.goto(page_address(root))
            page.wait_for_selector("body[data-first-render-ms]")
            drive(page, workdir)
            # The health panel asks the daemon again a second after events: wait for its counts.
            expect(page.locator("#health dd[data-field='event streams']")).to_have_text("1")
            expect(page.locator("#health dd[data-field='pending requests']")).to_have_text("1")
            page.mouse.move(0, 0)
            page.screenshot(path=str(args.output))
            browser.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
