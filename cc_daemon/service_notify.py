"""The service manager's notify protocol (systemd's ``sd_notify``), with the standard library.

Owns: ``ServiceNotifier``: what the environment says at start (``NOTIFY_SOCKET``, a path or
an abstract ``@name``; ``WATCHDOG_USEC`` and ``WATCHDOG_PID``), and sending the state lines
of the protocol as one datagram each: ``READY=1`` (with ``MAINPID`` and a ``STATUS``),
``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=...``. Without ``NOTIFY_SOCKET`` (a daemon started
from a shell) every call does nothing.

Must not: decide when the daemon is ready or alive (``daemon`` does), or stop the daemon
because the manager went away: a datagram that cannot be sent is logged once, and the
daemon goes on. The variables are not passed on to runtimes (``supervisor.child_env``): a
runtime must never speak for the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger("cc_daemon")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address ``NOTIFY_SOCKET`` names: a filesystem path, or an abstract name
    (``@name``, sent as ``\\0name``); None for none or a kind we do not speak (vsock)."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    log.warning("%s=%s is neither a path nor an abstract socket; not notifying the service manager",
                NOTIFY_SOCKET, value)
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog period in seconds the manager asks of this process, or None."""
    usec, owner = environ.get(WATCHDOG_USEC), environ.get(WATCHDOG_PID)
    try:
        period = int(usec) / 1e6 if usec else 0.0
        meant_for_us = owner is None or int(owner) == pid
    except ValueError:
        log.warning("ignoring a malformed %s=%r / %s=%r", WATCHDOG_USEC, usec, WATCHDOG_PID, owner)
        return None
    return period if period > 0 and meant_for_us else None


class ServiceNotifier:
    """Tells the service manager (if one started us) how the daemon is doing."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self._where = environ.get(NOTIFY_SOCKET)
        self.address = notify_address(self._where)
        self.watchdog_s = watchdog_interval(environ, os.getpid()) if self.address is not None else None
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: a manager that went away would otherwise fill the log
                log.warning("cannot notify the service manager at %s: %s", self._where, exc)
                self._failed = True
