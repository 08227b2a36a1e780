"""A real browser for the web workbench's tests: Debian's chromium driven by Playwright.

Owns: launching chromium from the system package (never a browser Playwright downloads:
``.ci/run`` installs ``chromium`` with apt-get when it is missing), a free TCP port for a
daemon that must come back on the same address, the workbench page as a user drives it,
and screenshots of every page of a test that failed.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, expect

CHROMIUM = Path(os.environ.get("CCD_CHROMIUM", "/usr/bin/chromium"))
#: Where a failed test's screenshots go (CI can keep the directory as an artifact).
FAILURE_SCREENSHOTS = Path(__file__).resolve().parents[2] / ".cache" / "browser-failures"


def launch(playwright: Playwright, home: Path) -> Browser:
    """Chromium with ``home`` as its home: it writes its config and caches there (crash
    reports, dconf), and a browser outlives the per-test private home, so it gets its own."""
    if not CHROMIUM.exists():
        pytest.fail(f"no chromium at {CHROMIUM}: the browser tests need Debian's chromium package "
                    "(.ci/run installs it with apt-get install -y chromium; CCD_CHROMIUM names another binary)")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    return playwright.chromium.launch(executable_path=str(CHROMIUM), env=env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Workbench:
    """One browser context (one client of the daemon, its own sessionStorage) on the page."""

    def __init__(self, context: BrowserContext, name: str):
        self.context = context
        self.name = name
        self.page: Page = context.new_page()
        self.console: list[ConsoleMessage] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.page.on("console", lambda message: self.console.append(message))
        self.page.on("pageerror", lambda error: self.console.append(error))
        self.page.on("request", lambda request: self.requests.append((request.url, request.headers)))

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-first-render-ms]")
        expect(self.page.locator("#connection")).to_have_text("live")

    def first_render_ms(self) -> int:
        return int(self.page.get_attribute("body", "data-first-render-ms") or "-1")

    def create_session(self, cwd: Path, name: str | None = None) -> str:
        page = self.page
        page.fill("#create-form [name=cwd]", str(cwd))
        if name:
            page.fill("#create-form [name=name]", name)
        page.click("#create-form button")
        row = page.locator("#sessions tbody tr.selected")
        expect(row).to_have_count(1)
        return row.get_attribute("data-session-id") or ""

    def select(self, session_id: str) -> None:
        self.page.click(f"#sessions tr[data-session-id='{session_id}'] button")
        expect(self.page.locator(f"#sessions tr.selected[data-session-id='{session_id}']")).to_have_count(1)

    def send(self, text: str) -> None:
        self.page.fill("#send-form textarea", text)
        self.page.press("#send-form textarea", "Enter")
        expect(self.page.locator("#send-form textarea")).to_have_value("")

    def turn(self, text: str):
        """The conversation's turn whose message is ``text``."""
        return self.page.locator("#conversation .turn", has=self.page.locator(".message", has_text=text))

    def received(self) -> int:
        """Events this page received (gaps and the shutdown notice not counted)."""
        text = self.page.locator("#health dd[data-field='last event']").inner_text()
        return int(re.search(r"this page: (\d+) received", text).group(1))

    def console_errors(self) -> list[str]:
        return [str(getattr(message, "text", message)) for message in self.console
                if getattr(message, "type", "error") == "error"]

    def screenshot(self, test_name: str) -> Path:
        FAILURE_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = FAILURE_SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', test_name)}-{self.name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path
