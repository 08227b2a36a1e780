"""The daemon: composes the services, owns the process lifecycle.

Owns: start-up order (a TCP bind before anything is written, single-instance lock, a Unix
bind, stale-file clean-up, log, database, token, discovery file), the serving thread, signal
handling, telling a service manager when it is ready, alive and stopping
(``service_notify``), and the graceful stop (in-flight requests finish, every SSE
subscriber gets ``shutdown``, files the daemon created are removed).

Must not: implement any service or endpoint itself; it only wires them together.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import API_VERSION, __version__, discovery, logs
from .audit import AuditLog
from .auth import LOOPBACK_NAMES, Authenticator, TokenStore
from .database import DatabaseError
from .eventlog import DEFAULT_RETENTION_EVENTS, SqliteEventStore, leave_id_floor
from .events import EventBus
from .identity import ClientRegistry, load_or_create_key
from .methods import MethodContext, build_registry
from .metrics import Metrics
from .permissions import PermissionStore
from .records import RecordTable
from .rpc import Dispatcher
from .runtimes.registry import RuntimeInfo, RuntimeRegistry
from .service_notify import ServiceNotifier
from .session import SessionLimits
from .session_states import STATES
from .session_records import SessionRecords
from .usage_ledger import DailyUsage
from .sessions import SessionManager
from .storage import (AlreadyRunning, DataDir, InstanceLock, PrivateRotatingFileHandler, atomic_write,
                      atomic_write_json, identity_of, read_json, remove_if_unchanged, remove_quietly)
from .supervisor import SupervisionConfig
from .throttle import Throttle
from .timers import Scheduler
from .transport.addresses import ListenAddress
from .transport.servers import Limits, Services, bind_server

log = logging.getLogger("cc_daemon")


class StartupError(RuntimeError):
    """The daemon cannot start; the message says why, for a human."""


@dataclass
class DaemonOptions:
    listen: ListenAddress
    data_dir: DataDir
    #: Further addresses to listen on beside ``listen`` (``serve --listen`` given more than once).
    also_listen: tuple[ListenAddress, ...] = ()
    token_path: Path | None = None
    heartbeat_s: float = 15.0
    audit: bool = True
    unauthenticated_metrics: bool = False
    allow_remote: bool = False
    allow_origins: tuple[str, ...] = ()
    #: Recent events kept in memory to serve the live tail without reading the database.
    event_buffer: int = 65536
    #: ... and at most this many megabytes of them (big runtime chunks would make 65,536 events GBs).
    event_buffer_mb: float = 16.0
    retention_events: int = DEFAULT_RETENTION_EVENTS
    retention_days: float = 7.0
    #: "normal": events survive a daemon crash; "full": also power loss (fsync per group commit).
    event_log_sync: str = "normal"
    limits: Limits = field(default_factory=Limits)
    log_level: str = "info"
    #: "text" or "json" (``logs``).
    log_format: str = "text"
    #: Sessions whose runtime runs (or will restart) at once; session.create refuses more.
    max_sessions: int = 8
    max_queued_turns: int = 16
    #: Restart backoff and stop timings of session runtimes (tests shrink them).
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    #: The monotonic clock of the throttle's windows and lockouts, of how long a rotated token
    #: is recognised, and of the audit log's seconds (tests move it by hand).
    clock: Callable[[], float] = time.monotonic

    @property
    def listens(self) -> tuple[ListenAddress, ...]:
        return (self.listen, *self.also_listen)

    @property
    def tcp(self) -> bool:
        """Whether any listener is TCP, and so a bearer token is needed."""
        return any(address.scheme == "tcp" for address in self.listens)

    @property
    def resolved_token_path(self) -> Path:
        return self.token_path or self.data_dir.default_token_file


class Daemon:
    #: How often the data dir's identity is checked: the longest a deleted data dir goes unnoticed.
    STORAGE_CHECK_S = 1.0

    def __init__(self, options: DaemonOptions):
        self.options = options
        self.data_dir = options.data_dir
        self.started_at = time.time()
        self._started_monotonic = time.monotonic()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._ready = False
        self._lock = InstanceLock(self.data_dir.lock_file)
        self._servers: list = []
        self._serve_threads: list[threading.Thread] = []
        #: What this daemon put in place (its socket, pid and discovery files) and their
        #: identities: it removes them at stop only if they are still the ones it made.
        self._own_files: dict[Path, tuple[int, int] | None] = {}
        #: The data dir and the database as they were at start; see ``_check_data_dir``.
        self._storage_identity: list[tuple[Path, tuple[int, int] | None]] = []
        self._log_handler: logging.Handler | None = None
        self.event_log: SqliteEventStore | None = None
        self._runtime_infos: list[RuntimeInfo] | None = None
        self._runtime_infos_lock = threading.Lock()
        #: Every bound address, in the order given; ``address`` is the one clients should use.
        self.addresses: list[ListenAddress] = []
        self._bound: dict[ListenAddress, ListenAddress] = {}  # as given -> as bound (port 0 resolved)
        self.address: ListenAddress = options.listen
        self.notifier = ServiceNotifier()

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind, acquire the data dir, and serve in background threads.

        What can fail without touching the data dir is tried first: a TCP port that is taken
        refuses the start before any directory, lock, log or database exists (a Unix socket
        lives in the data dir by default, and removing a stale one needs the lock, so Unix
        sockets are bound right after the lock)."""
        options = self.options
        for address in options.listens:
            if address.scheme == "tcp" and not options.allow_remote and not address.is_loopback():
                raise StartupError(f"{address.url()} is not a loopback address; the daemon has no TLS, "
                                   "so listening there needs --allow-remote")
        try:
            self._bind("tcp")
            self.data_dir.ensure()
            try:
                self._lock.acquire()
            except AlreadyRunning:
                first = discovery.parse(read_json(self.data_dir.discovery_file), self.data_dir.default_token_file)
                raise StartupError(f"a daemon is already running for {self.data_dir.root} "
                                   f"(pid {first.pid if first else '?'}, "
                                   f"{first.address.url() if first else '?'})") from None
        except BaseException:
            self._close_unattached_servers()
            raise
        try:
            self._bind("unix")
            self._start_locked()
        except BaseException:
            self._close_unattached_servers()
            self._release()
            raise

    def _bind(self, scheme: str) -> None:
        for address in self.options.listens:
            if address.scheme != scheme:
                continue
            try:
                server = bind_server(address)
            except OSError as exc:
                raise StartupError(f"cannot listen on {address.url()}: {exc.strerror or exc}") from None
            self._servers.append(server)
            self._bound[address] = self._bound_address(address, server)
            if address.scheme == "unix":
                socket_path = Path(address.path or "")
                self._own_files[socket_path] = identity_of(socket_path)
        # In the order given (TCP ones are bound first); clients use a Unix socket first: no
        # token to read, and no other local user can reach it.
        self.addresses = [self._bound[given] for given in self.options.listens if given in self._bound]
        if self.addresses:
            self.address = min(self.addresses, key=lambda a: a.scheme != "unix")

    def _close_unattached_servers(self) -> None:
        if not self._serve_threads:
            for server in self._servers:
                server.server_close()
            self._servers.clear()
            self._remove_own_files()

    def _start_locked(self) -> None:
        options = self.options
        # We hold the lock, so whatever discovery or pid file is left belongs to a dead daemon.
        for stale in (self.data_dir.discovery_file, self.data_dir.pid_file):
            if stale.exists():
                log.info("removing stale %s", stale)
                remove_quietly(stale)
        self._attach_log_file()
        self.scheduler = Scheduler()
        self.event_log = self._open_event_log()
        self.bus = EventBus(self.event_log)
        self.tokens = TokenStore(options.resolved_token_path, options.clock) if options.tcp else None
        if self.tokens is not None:
            self.tokens.load_or_create()
            self.tokens.on_change = self._end_streams_of_old_tokens
        self.audit = AuditLog(self.data_dir.audit_log if options.audit else None, options.clock)
        # Clients and pending permission requests live in the same database as the events.
        self.client_table = self._open_record_table("clients")
        self.permission_table = self._open_record_table("permission_requests")
        self.session_table = self._open_record_table("sessions")
        self.usage_table = self._open_record_table("daily_usage")
        self.daily_usage = DailyUsage(self.usage_table)
        self.clients = ClientRegistry(self.client_table, load_or_create_key(self.data_dir.identity_key))
        self.permissions = PermissionStore(self.bus, self.scheduler, table=self.permission_table)
        self.clients.in_use = self.permissions.originator_keys
        self.runtimes = RuntimeRegistry()
        self.sessions = SessionManager(
            self.bus, self.permissions, self.scheduler, self.data_dir, self.runtimes,
            limits=SessionLimits(max_sessions=options.max_sessions, max_queued_turns=options.max_queued_turns),
            supervision=options.supervision, records=SessionRecords(self.session_table),
            usage=self.daily_usage)
        self.metrics = Metrics(self.uptime_s, self.sessions.live_count, self.daily_usage.today)
        self.registry = build_registry(MethodContext(
            bus=self.bus, clients=self.clients, permissions=self.permissions, event_log=self.event_log,
            describe=self.describe,
            request_shutdown=self.request_stop, rotate_token=self.rotate_token, uptime_s=self.uptime_s,
            sessions=self.sessions))
        self.permissions.restore()
        self.sessions.restore()
        self.dispatcher = Dispatcher(self.registry, self._count_call)
        authenticator = Authenticator(self.tokens, self.audit, Throttle(clock=options.clock),
                                      allowed_hosts=self._allowed_hosts(),
                                      allowed_origins=frozenset(options.allow_origins))
        limits = options.limits
        limits.heartbeat_s = options.heartbeat_s
        services = Services(authenticator, self.clients, self.dispatcher, self.bus, self.metrics, limits,
                            readiness=self.readiness, unauthenticated_metrics=options.unauthenticated_metrics)
        self._describe_metrics()
        for server in self._servers:
            server.attach(services)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                      name=f"ccd-accept-{server.transport}", daemon=True)
            self._serve_threads.append(thread)
            thread.start()
        self._write_discovery()
        self._repeat(5.0, self.clients.flush)  # client ids a failed write left unsaved
        self._repeat(1.0, self.audit.flush)  # the counts of a flood that has stopped
        self._storage_identity = [(path, identity_of(path)) for path in (self.data_dir.root, self.data_dir.database)]
        self._repeat(self.STORAGE_CHECK_S, self._check_data_dir)
        if self.tokens is not None:
            self._repeat(self.tokens.FILE_CHECK_S, self.tokens.reload_if_changed)
        self._ready = True
        listening = " and ".join(address.url() for address in self.addresses)
        log.info("cc_daemon %s listening on %s (pid %d, data dir %s)", __version__, listening,
                 os.getpid(), self.data_dir.root)
        self.notifier.ready(f"listening on {listening}")
        if self.notifier.watchdog_s is not None:
            # Sent by the timer thread, which every timeout, retry and periodic check of the
            # daemon runs on: if it hangs, the pings stop and the manager restarts us.
            # Twice per period, as sd_watchdog_enabled(3) advises.
            self._repeat(self.notifier.watchdog_s / 2, self.notifier.watchdog)

    def _open_event_log(self) -> SqliteEventStore:
        options = self.options
        try:
            return SqliteEventStore(self.data_dir.database, retention_events=options.retention_events,
                                    retention_age_s=options.retention_days * 86400.0,
                                    cache_events=options.event_buffer,
                                    cache_bytes=max(1, int(options.event_buffer_mb * 2**20)),
                                    synchronous=options.event_log_sync)
        except DatabaseError as exc:
            raise StartupError(str(exc)) from None

    def _open_record_table(self, table: str) -> RecordTable:
        try:
            return RecordTable(self.data_dir.database, table, self.options.event_log_sync)
        except DatabaseError as exc:
            self.event_log.close()
            raise StartupError(str(exc)) from None

    def _allowed_hosts(self) -> frozenset[str]:
        hosts = {(address.host or "").lower() for address in self.options.listens if address.scheme == "tcp"}
        return LOOPBACK_NAMES | {name for host in hosts if host for name in (host, f"[{host}]")}

    @staticmethod
    def _bound_address(address: ListenAddress, server) -> ListenAddress:
        if address.scheme == "unix":
            return address
        port = server.server_address[1]  # the kernel's choice for port 0
        return ListenAddress("tcp", host=address.host, port=port)

    def _write_discovery(self) -> None:
        record = discovery.build(self.address, self.addresses, pid=os.getpid(), version=__version__, api_version=API_VERSION,
                                 started_at=self.started_at, data_dir=self.data_dir.root,
                                 token_path=self.options.resolved_token_path if self.tokens else None)
        atomic_write(self.data_dir.pid_file, f"{os.getpid()}\n".encode())
        atomic_write_json(self.data_dir.discovery_file, record)
        for path in (self.data_dir.pid_file, self.data_dir.discovery_file):
            self._own_files[path] = identity_of(path)

    def _attach_log_file(self) -> None:
        handler = PrivateRotatingFileHandler(self.data_dir.daemon_log, maxBytes=10 * 1024 * 1024,
                                             backupCount=3, encoding="utf-8")
        logs.prepare(handler, self.options.log_format, self.options.log_level)
        package_logger = logging.getLogger("cc_daemon")
        package_logger.addHandler(handler)
        if package_logger.level == logging.NOTSET or package_logger.level > handler.level:
            package_logger.setLevel(handler.level)
        self._log_handler = handler

    def _check_data_dir(self) -> None:
        """Notice a data dir (or database) deleted or replaced under the running daemon.

        SQLite goes on committing into an unlinked file without an error, so without this the
        daemon would acknowledge events that the next start cannot find. Once noticed, the
        event log refuses every publish (-32003) and ``/readyz`` answers 503 until a restart."""
        for path, identity in self._storage_identity:
            if identity_of(path) != identity:
                self.event_log.mark_lost(f"{path} was removed or replaced while the daemon was running")
                self._storage_identity = []  # noticed once; the floor is left once
                return self._leave_id_floor()

    def _leave_id_floor(self) -> None:
        """Where the data dir was deleted (not replaced by someone), put back a database that
        holds only the last id handed out, so that ids never go backwards at the next start."""
        if self.data_dir.root.exists():
            return  # another daemon or the user made a new one: it is theirs
        try:
            self.data_dir.ensure()
            leave_id_floor(self.data_dir.database, self.bus.last_id())
        except (OSError, DatabaseError) as exc:
            log.error("could not leave the event id floor in %s: %s", self.data_dir.root, exc)
            return
        log.warning("left %s holding only the last event id (%d), so that the next daemon's ids go on from it",
                    self.data_dir.database, self.bus.last_id())

    def _repeat(self, interval_s: float, job: Callable[[], object]) -> None:
        """Run ``job`` on the timer thread every ``interval_s`` until the daemon stops; a run
        that fails (a token file unreadable for a moment) is logged and the next one still comes."""
        def run() -> None:
            if self._stop_requested.is_set():
                return
            try:
                job()
            except Exception:
                log.exception("periodic %s failed; retrying in %.0f s", getattr(job, "__qualname__", job), interval_s)
            self.scheduler.call_later(interval_s, run)
        self.scheduler.call_later(interval_s, run)

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe_counter("ccd_rpc_calls_total", "JSON-RPC calls by method and outcome")
        m.describe_counter("ccd_http_requests_total", "HTTP requests by endpoint")
        m.describe_counter("ccd_events_delivered_total", "Events written to SSE subscribers")
        m.describe_counter("ccd_http_responses_total", "HTTP responses by status code")
        m.describe_counter("ccd_http_request_seconds_total", "Seconds spent answering HTTP requests")
        m.describe_counter("ccd_auth_denied_total", "Requests refused by authentication, by status")
        m.describe_counter("ccd_connections_refused_total", "Connections refused over the connection cap")
        m.describe_counter("ccd_connections_evicted_total", "Unauthenticated connections shut for newer ones (guards.Gate)")
        m.describe_counter("ccd_events_replayed_total", "Events written by a stream's own thread: its replay "
                           "after Last-Event-ID or since, and catching up after falling behind the live tail")
        m.describe_counter("ccd_gaps_total", "gap events sent: readers that asked for events retention had dropped")
        m.histogram("ccd_rpc_duration_seconds", "JSON-RPC call duration by method, from parsed request to encoded reply")
        m.gauge("ccd_event_last_id", "Id of the newest published event", self.bus.last_id)
        m.gauge("ccd_events_published_total", "Events published since start, by type", self.bus.published_counts,
                label="type", kind="counter")
        m.gauge("ccd_sse_subscribers", "Open /events streams", lambda: self.bus.subscriber_count)
        m.gauge("ccd_sse_lag_events_max", "Events the furthest-behind /events stream has yet to be offered",
                self.bus.max_lag)
        m.gauge("ccd_permission_requests_pending", "Pending permission requests", self.permissions.pending_count)
        m.gauge("ccd_sessions", "Sessions by state", self._sessions_by_state, label="state")
        m.gauge("ccd_runtime_restarts_total", "Runtime restarts scheduled by session supervisors since start",
                lambda: self.bus.published_counts().get("runner_restarting", 0), kind="counter")
        m.gauge("ccd_auth_decisions_total", "Authentication decisions since start, by outcome",
                self.audit.decision_counts, label="outcome", kind="counter")
        m.gauge("ccd_event_log_events", "Events retained in daemon.db for replay",
                lambda: self._event_log_detail()["events"])
        m.gauge("ccd_event_log_bytes", "Size of daemon.db and its write-ahead log",
                lambda: self._event_log_detail()["bytes"])
        m.gauge("ccd_event_log_oldest_age_seconds", "Age of the oldest retained event (no series when none is)",
                lambda: self._event_log_detail()["oldest_age_s"])

    def _count_call(self, method: str, code: int | None, seconds: float) -> None:
        name = method if self.registry.get(method) is not None else "(unknown)"  # a client cannot add series
        self.metrics.inc("ccd_rpc_calls_total", method=name, outcome="ok" if code is None else str(code))
        self.metrics.observe("ccd_rpc_duration_seconds", seconds, method=name)

    def _sessions_by_state(self) -> dict[str, int]:
        return {**dict.fromkeys(STATES, 0), **self.sessions.counts()}

    def _event_log_detail(self) -> dict[str, float | None]:
        _, detail = self.event_log.health()
        size = 0
        for path in (self.data_dir.database, Path(f"{self.data_dir.database}-wal")):
            try:
                size += path.stat().st_size
            except FileNotFoundError:
                pass
        oldest_ts = detail["oldest_ts"]
        return {"events": max(0, detail["last_id"] - detail["oldest_id"] + 1), "bytes": size,
                "oldest_age_s": None if oldest_ts is None else max(0.0, time.time() - oldest_ts)}

    # -- queries ----------------------------------------------------------------------------
    def uptime_s(self) -> float:
        return time.monotonic() - self._started_monotonic

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = self._ready and not self._stop_requested.is_set()
        event_log_ok, event_log = self.event_log.health()
        return ready and event_log_ok, {"stopping": self._stop_requested.is_set(), "event_log": event_log}

    def describe(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "api_version": API_VERSION,
                "python": sys.version.split()[0], "transport": self.address.scheme,
                "address": self.address.url(), "addresses": [address.url() for address in self.addresses],
                "data_dir": str(self.data_dir.root),
                "started_at": self.started_at, "uptime_s": round(self.uptime_s(), 3),
                "last_event_id": self.bus.last_id(), "subscribers": self.bus.subscriber_count,
                "connections": sum(server.gate.active for server in self._servers),
                "pending_permissions": self.permissions.pending_count(),
                "sessions": self.sessions.counts(),
                "runtimes": [info.as_dict() for info in self.runtime_infos()]}

    def runtime_infos(self) -> list[RuntimeInfo]:
        """What the runtimes said about themselves when first asked, logged then. Not at start:
        finding them scans every installed distribution and ``claude --version`` starts a
        program, which would delay every start for a query only some clients make."""
        with self._runtime_infos_lock:
            if self._runtime_infos is None:
                self._runtime_infos = self.runtimes.describe()
                for info in self._runtime_infos:
                    log.info("runtime %s", info.describe())
            return self._runtime_infos

    def rotate_token(self) -> bool:
        if self.tokens is None:
            return False
        self.tokens.rotate()
        self._end_streams_of_old_tokens()
        return True

    def _end_streams_of_old_tokens(self) -> None:
        generation = self.tokens.generation
        closed = self.bus.end_subscriptions(
            lambda s: s.tag is not None and s.tag.token_generation not in (None, generation), "token_rotated")
        log.info("token changed; %d event streams opened with the old token were closed", closed)

    # -- stop -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop_requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (by a signal or ``system.shutdown``)."""
        return self._stop_requested.wait(timeout)

    def stop(self, grace_s: float = 5.0) -> None:
        """Graceful stop: finish in-flight requests, say ``shutdown`` to every stream, clean up."""
        if self._stopped.is_set():
            return
        self._stop_requested.set()
        self._ready = False
        log.info("stopping")
        self.notifier.stopping()
        for server in self._servers:
            server.stop_accepting()
        deadline = time.monotonic() + grace_s
        for server in self._servers:
            server.in_flight.wait_idle(max(0.0, deadline - time.monotonic()))
        self.sessions.close_all("daemon shutdown")  # before the bus closes: their last events are kept
        self.bus.close()
        deadline = time.monotonic() + 2.0
        while self.bus.subscriber_count and time.monotonic() < deadline:
            time.sleep(0.01)
        for server in self._servers:
            server.server_close()
        self.permissions.close()
        self.scheduler.stop()
        self.clients.flush()
        self.client_table.close()
        self.permission_table.close()
        self.session_table.close()
        self.usage_table.close()
        self._remove_own_files()
        self.audit.close()
        log.info("stopped")
        self.notifier.close()
        self._release()
        self._stopped.set()

    def _remove_own_files(self) -> None:
        for path, identity in self._own_files.items():
            remove_if_unchanged(path, identity)
        self._own_files.clear()

    def _release(self) -> None:
        if self.event_log is not None:
            self.event_log.close()  # everything appended is stored before another daemon may open the file
        self._lock.release()
        if self._log_handler is not None:
            logging.getLogger("cc_daemon").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
