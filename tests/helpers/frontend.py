"""A frontend for tests: follows a daemon's events over SSE in a thread, like a watching UI."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

from cc_daemon.client import Client

from helpers.daemons import Running, wait_for

FAKES = Path(__file__).parent.parent / "fakes"
ENTRYPOINT_DIR = FAKES / "entrypoint"


class Watcher:
    """Collects the events of ``/events?session=<id>`` (or all events) as they stream in."""

    def __init__(self, client: Client, session_id: str | None = None, since: int | None = None):
        self.events: list[dict[str, Any]] = []
        self._stream = client.events(since, session=session_id, reconnect=False, read_timeout=60)
        self._thread = threading.Thread(target=self._follow, name="test-watcher", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        for event in self._stream:
            self.events.append(event)

    def find(self, type: str, **data: Any) -> list[dict[str, Any]]:
        """Events of ``type`` whose data has every given item."""
        return [event for event in list(self.events) if event["type"] == type
                and all(event["data"].get(key) == value for key, value in data.items())]

    def wait(self, type: str, timeout: float = 10.0, count: int = 1, **data: Any) -> dict[str, Any]:
        """The ``count``-th event of ``type`` matching ``data``, once it has arrived."""
        found = wait_for(lambda: len(self.find(type, **data)) >= count and self.find(type, **data),
                         timeout, message=f"{count} x {type} {data or ''}")
        return found[count - 1]

    def types(self, predicate: Callable[[dict], bool] = lambda event: True) -> list[str]:
        return [event["type"] for event in list(self.events) if predicate(event)]

    def text_of(self, turn_id: str) -> str:
        return "".join(event["data"]["text"] for event in self.find("text_chunk", turn_id=turn_id))

    def close(self) -> None:
        self._stream.close()


def client_of(running: Running, kind: str) -> Client:
    """A fresh frontend of ``kind`` (its own client id) talking to ``running``."""
    return running.client(kind=kind)


def command_output(client: Client, cwd, args: list[str], text: str = "go", **create: Any) -> str:
    """What a ``command`` runtime session running ``args`` writes in one turn."""
    session_id = client.call("session.create", runtime="command", cwd=str(cwd), args=args, **create)["session_id"]
    watcher = Watcher(client, session_id, since=0)
    turn_id = client.call("session.send", session_id=session_id, text=text)["turn_id"]
    watcher.wait("turn_done", turn_id=turn_id)
    watcher.close()
    return watcher.text_of(turn_id)


def session_state(client: Client, session_id: str) -> str:
    return client.call("session.get", session_id=session_id)["state"]


def wait_state(client: Client, session_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    return wait_for(lambda: (info := client.call("session.get", session_id=session_id))["state"] == state and info,
                    timeout, message=f"session {session_id} to be {state}")


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def path_with_fake_claude() -> str:
    return f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}"
