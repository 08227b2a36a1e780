"""``cheetahclaws daemon open [--browser]``: the address of the web workbench, with the token.

Owns: building the page's address from the running daemon's discovery record (its TCP
listener, and the token in the fragment, which a browser never sends to any server nor
puts in a ``Referer``), and handing it to a browser without putting the token on a command
line: other local users can read every process's arguments.

Must not: talk to the daemon (the page does), or change how it listens: without a TCP
listener it only says how to start one.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path
from urllib.parse import quote

from cc_daemon.storage import atomic_write

from .common import EXIT_NO_DAEMON, add_data_dir, documented_action, fail

PAGE_PATH = "/ui/"
#: Wildcard listen hosts, and the loopback name a browser on this machine reaches them by.
BROWSER_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def add_action(actions: argparse._SubParsersAction) -> None:
    parser = documented_action(
        actions, "open", "print (or open in a browser) the address of the web workbench",
        "cheetahclaws daemon open --browser",
        "0 printed (or handed to a browser); 1 the daemon has no TCP listener, or no browser could be started "
        "(the address is printed anyway); 3 no daemon running",
        description="Print the address of the daemon's web page, http://HOST:PORT/ui/#token=..., or open it in "
                    "a browser. The daemon needs a TCP listener for it: serve --listen tcp://127.0.0.1:8765 "
                    "(give --listen twice to keep the Unix socket too).")
    add_data_dir(parser)
    parser.add_argument("--browser", action="store_true",
                        help="open the page in the default browser ($BROWSER, or the desktop's)")
    parser.set_defaults(run=run_open)


def run_open(args: argparse.Namespace) -> int:
    from .daemon_verbs import daemon_info

    layout, found, alive = daemon_info(args)
    if found is None or not alive:
        fail("no daemon is running; start one that a browser can reach with:\n  "
             + serve_hint(layout.default_socket), EXIT_NO_DAEMON)
    tcp = found.tcp_address()
    if tcp is None:
        fail(f"the daemon listens on {found.address.url()} only, which no browser can reach; restart it with a "
             f"TCP listener as well:\n  cheetahclaws daemon stop && {serve_hint(Path(found.address.path or ''))}", 1)
    try:
        token = found.token_path.read_text().strip()
    except OSError as exc:
        fail(f"cannot read the daemon token at {found.token_path}: {exc.strerror}", 1)
    url = page_url(tcp.host or "", tcp.port or 0, token)
    print(url)
    if not args.browser:
        return 0
    # The token goes to the browser inside a file of the owner's private run directory, not
    # on the browser's command line, where any local user could read it (/proc/PID/cmdline).
    launcher = layout.run_dir / "open.html"
    atomic_write(launcher, launcher_page(url))
    if not webbrowser.open(launcher.as_uri()):
        print("cheetahclaws: no browser could be started; open the address above yourself", file=sys.stderr)
        return 1
    return 0


def page_url(host: str, port: int, token: str) -> str:
    host = BROWSER_HOSTS.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"http://{netloc}{PAGE_PATH}#token={quote(token, safe='')}"


def launcher_page(url: str) -> bytes:
    """A page that sends the browser on to ``url`` at once (no script: a meta refresh)."""
    escaped = url.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return (f'<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
            f'<meta http-equiv="refresh" content="0;url={escaped}"><title>cc_daemon</title>'
            f'<p>Opening the cc_daemon workbench…</p>\n').encode()


def serve_hint(socket_path: Path) -> str:
    return f"cheetahclaws serve --listen unix://{socket_path} --listen tcp://127.0.0.1:8765"
