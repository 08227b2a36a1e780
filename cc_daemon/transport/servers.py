"""The listening servers: a threading server for TCP and one for a Unix socket.

Owns: what a server is given (``Services``, ``Limits``), a thread per connection under the
connection cap (over it, the refuser answers), the threads and guards shared by every
connection (reaper, refuser, live tail, in-flight count), stopping the accept loop at
once, and a Unix socket's path: a private directory, 0600 from the bind, a stale socket
removed only when nobody answers on it.

Must not: parse HTTP (``handler`` does) or hold any service state of its own: it passes
the services it is given to the handler. Services never import this package.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import socketserver
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..auth import Authenticator
from ..events import EventBus
from ..identity import ClientRegistry
from ..metrics import Metrics
from ..rpc import Dispatcher
from ..safe_paths import make_private_dir
from .addresses import ListenAddress
from .guards import Gate, InFlight, Reaper, Refuser, shut_down
from .handler import RequestHandler
from .kernel import leave_signals_to_the_main_thread
from .live_tail import LiveTail

log = logging.getLogger("cc_daemon.transport")


@dataclass
class Limits:
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 512
    #: Connections not yet authenticated, of anyone (see ``guards.Gate``); past it the oldest goes.
    unproven_slots: int = 128
    #: Idle keep-alive connection lifetime, and the send timeout of a stalled SSE reader.
    idle_timeout_s: float = 60.0
    #: Whole-request deadline once its first byte arrived (headers and body).
    request_timeout_s: float = 15.0
    heartbeat_s: float = 15.0
    retry_ms: int = 3000


@dataclass
class Services:
    authenticator: Authenticator
    clients: ClientRegistry
    dispatcher: Dispatcher
    bus: EventBus
    metrics: Metrics
    limits: Limits = field(default_factory=Limits)
    readiness: Callable[[], tuple[bool, dict[str, Any]]] = lambda: (True, {})
    unauthenticated_metrics: bool = False


class DaemonServerMixin:
    """Connection cap and shared state for both socket families."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True
    transport = "tcp"
    services: Services
    reaper: Reaper

    def attach(self, services: Services) -> None:
        """Give the bound listener what it serves with; call before ``serve_forever``.

        Binding comes first and apart, so that a daemon that cannot listen (the port is
        taken) finds out before it has created or migrated anything in its data dir."""
        self.services = services
        self.reaper = Reaper()
        self.refuser = Refuser()
        self.live_tail = LiveTail(services.bus, services.metrics, services.limits.heartbeat_s)
        self.in_flight = InFlight()
        self.gate = Gate(services.limits.max_connections, services.limits.unproven_slots)
        services.metrics.gauge("ccd_connections_open", "Open client connections", lambda: self.gate.active)

    def process_request(self, request, client_address) -> None:
        admitted, victim = self.gate.admit(request)
        if victim is not None:
            self.services.metrics.inc("ccd_connections_evicted_total")
            shut_down(victim)
        if not admitted:
            self.services.metrics.inc("ccd_connections_refused_total")
            self.refuser.refuse(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  daemon=True, name="ccd-conn")
        thread.start()

    def _serve_connection(self, request, client_address) -> None:
        leave_signals_to_the_main_thread()
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.gate.leave(request)
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        log.exception("unhandled error on a connection")

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        if not hasattr(self, "services"):
            return  # bound, never attached: the start failed after the bind
        self.reaper.stop()
        self.refuser.stop()
        self.live_tail.stop()

    def stop_accepting(self) -> None:
        """Stop the accept loop now rather than at its next poll tick."""
        stopper = threading.Thread(target=self.shutdown, name="ccd-stop")
        stopper.start()
        # A throwaway connection wakes the selector the accept loop is sleeping in.
        while stopper.is_alive():
            try:
                with socket.socket(self.address_family, socket.SOCK_STREAM) as poke:
                    poke.settimeout(0.2)
                    poke.connect(self.server_address)
            except OSError:
                pass
            stopper.join(0.05)


class TcpServer(DaemonServerMixin, socketserver.TCPServer):
    transport = "tcp"

    def __init__(self, address: ListenAddress):
        self.address_family = address.family
        socketserver.TCPServer.__init__(self, address.sockaddr(), RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call getfqdn(): a DNS round trip we do not need.
        socketserver.TCPServer.server_bind(self)


class UnixServer(DaemonServerMixin, socketserver.UnixStreamServer):
    transport = "unix"
    allow_reuse_address = False

    def __init__(self, path: Path):
        prepare_socket_path(path)
        # Bind under a umask so the socket is 0600 from the start, not after a chmod.
        old_umask = os.umask(0o177)
        try:
            socketserver.UnixStreamServer.__init__(self, str(path), RequestHandler)
        finally:
            os.umask(old_umask)

    def get_request(self):
        request, _ = self.socket.accept()
        return request, ("unix", 0)


class SocketInUse(RuntimeError):
    """Something is listening at (or owns) the socket path; it is not ours to remove."""


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` bindable, removing a leftover socket only when nobody answers on it.

    Its directory must be ours and writable by nobody else, even a sticky one like /tmp:
    whoever can write there can delete our socket (or, in a sticky directory they own, any
    entry) and bind an impostor in its place."""
    make_private_dir(path.parent)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale socket %s (nothing listens on it)", path)
        path.unlink()
        return
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise SocketInUse(f"{path} cannot be probed ({exc.strerror}); refusing to replace it") from None
    finally:
        probe.close()
    raise SocketInUse(f"another process is listening on {path}")


def bind_server(address: ListenAddress) -> TcpServer | UnixServer:
    """A listener bound to ``address``, accepting into its backlog; ``attach`` it to serve."""
    if address.scheme == "unix":
        return UnixServer(Path(address.path or ""))
    return TcpServer(address)
