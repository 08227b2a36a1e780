"""The Python client of cc_daemon: find a daemon, call methods, follow events.

Owns: locating a running daemon (discovery file, or an explicit ``unix://`` / ``tcp://``
address and token), the HTTP session over either transport (``requests`` plus the
maintained ``requests-unixsocket`` adapter), the client id kept per client kind, typed
exceptions for every error the daemon can answer, an event stream that reconnects with
``Last-Event-ID`` and surfaces gaps, and typed helpers for sessions and permissions.

Must not: import daemon internals; it speaks only the wire contract, like any frontend.

Example::

    from cc_daemon.client import Client
    with Client.connect(kind="script") as client:
        print(client.call("system.ping"))
        for event in client.events(since=0):
            print(event["id"], event["type"])
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, urlencode

import requests
import requests_unixsocket
import sseclient

from . import API_VERSION, API_VERSION_HEADER
from .storage import DataDir, atomic_write, read_json

log = logging.getLogger("cc_daemon.client")

_UNSET: Any = object()

#: What a client kind may look like: it names a file under ``clients/``.
KIND_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,31}$")


# -- exceptions -------------------------------------------------------------------------
class DaemonError(Exception):
    """Base class of everything that can go wrong talking to the daemon."""


class NotRunning(DaemonError):
    """No daemon answers at the address (or no discovery file names one)."""


class NoAnswer(DaemonError):
    """The daemon accepted the connection but did not answer in time."""


class ProtocolError(DaemonError):
    """The daemon sent something the wire contract does not allow (a bug on its side)."""


class HttpStatusError(DaemonError):
    """An HTTP-level refusal; ``status`` and the decoded JSON ``body`` say which."""

    def __init__(self, status: int, body: Any, message: str | None = None):
        super().__init__(message or f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Unauthenticated(HttpStatusError):
    """401: wrong or missing token, or a Unix-socket peer that is not the daemon's user."""


class RateLimited(HttpStatusError):
    """429: too many failed attempts from this peer; ``retry_after`` seconds until the next try."""

    def __init__(self, status: int, body: Any, retry_after: float | None):
        super().__init__(status, body, f"rate limited by the daemon; retry after {retry_after} s")
        self.retry_after = retry_after


class VersionMismatch(HttpStatusError):
    """426: the daemon speaks another wire-contract version; ``expected`` names it."""

    def __init__(self, status: int, body: Any):
        expected = body.get("expected") if isinstance(body, dict) else None
        super().__init__(status, body, f"the daemon speaks API version {expected!r}; "
                                       f"this client speaks {API_VERSION!r}")
        self.expected = expected


class RpcCallError(DaemonError):
    """A JSON-RPC error response, with its ``code``, ``message`` and ``data``.

    Subclasses name the codes the contract defines; any other code arrives as this class.
    """

    code: int = 0

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class ParseError(RpcCallError):
    """-32700: the daemon could not parse the request body as JSON."""

    code = -32700


class InvalidRequest(RpcCallError):
    """-32600: the body is JSON but not a valid JSON-RPC request (or an empty batch)."""

    code = -32600


class MethodNotFound(RpcCallError):
    """-32601: no such method; ``rpc.discover`` lists the ones there are."""

    code = -32601


class InvalidParams(RpcCallError):
    """-32602: the params do not match the method's schema; ``data["field"]`` says where."""

    code = -32602


class InternalError(RpcCallError):
    """-32603: the daemon failed; ``data["error_id"]`` finds the traceback in its log."""

    code = -32603


class NotOriginator(RpcCallError):
    """-32001 (HTTP 403): no permission request of ours has that id (another client's, or none:
    the daemon answers both alike, so that ids cannot be probed)."""

    code = -32001


class UnknownRequest(RpcCallError):
    """-32002: our permission request is already resolved; ``data["state"]`` says how."""

    code = -32002


class StorageUnavailable(RpcCallError):
    """-32003: the daemon could not store the call's effect (disk full, corruption); nothing
    was acknowledged, so the call may be retried once ``/readyz`` answers 200 again."""

    code = -32003


class SessionNotFound(RpcCallError):
    """-32010: no session has that id (it may have been closed before a daemon restart)."""

    code = -32010


class SessionLimit(RpcCallError):
    """-32011: the daemon already runs its maximum of concurrent sessions (``serve --max-sessions``)."""

    code = -32011


class RuntimeUnavailable(RpcCallError):
    """-32012: the runtime is unknown or cannot start here (``data`` says why, e.g. not on PATH)."""

    code = -32012


class TurnQueueFull(RpcCallError):
    """-32013: the session already has its maximum of queued turns; retry after one finishes."""

    code = -32013


class SessionNotAccepting(RpcCallError):
    """-32014: the session (or the daemon, while it shuts down) takes no new work in its state."""

    code = -32014


class ApproverRefused(RpcCallError):
    """-32015: ``session.claim_approver`` refused: wrong client kind, no ``approve_via`` delegation,
    or another client already holds the role."""

    code = -32015


_ERRORS_BY_CODE = {cls.code: cls for cls in (
    ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError, NotOriginator, UnknownRequest,
    StorageUnavailable, SessionNotFound, SessionLimit, RuntimeUnavailable, TurnQueueFull, SessionNotAccepting,
    ApproverRefused)}


def rpc_error(error: Any) -> RpcCallError:
    """The typed exception for a JSON-RPC ``error`` object."""
    if not isinstance(error, dict):
        return RpcCallError(0, f"malformed error object: {error!r}")
    code = error.get("code", 0)
    return _ERRORS_BY_CODE.get(code, RpcCallError)(code, error.get("message", ""), error.get("data"))


class EventGap(DaemonError):
    """Raised by ``events(raise_on_gap=True)``: the daemon no longer has some events.

    ``event`` is the ``gap`` event; ``missed_from`` .. ``missed_to`` (inclusive) are gone.
    Iterating the same stream again continues after the hole.
    """

    def __init__(self, event: dict[str, Any]):
        data = event.get("data", {})
        self.event = event
        self.missed_from = data.get("missed_from")
        self.missed_to = data.get("missed_to")
        super().__init__(f"events {self.missed_from}..{self.missed_to} are gone ({data.get('reason')})")


class EventLogReset(DaemonError):
    """After a reconnect the daemon's newest event id is older than the last one we saw.

    Its event log was replaced (a wiped data dir, or a daemon without a durable log), so
    resuming by id would silently skip the new log's events. Start again with ``since=0``.
    """

    def __init__(self, last_seen: int, daemon_last: int):
        super().__init__(f"the daemon's event log restarted: we saw id {last_seen}, its newest is {daemon_last}")
        self.last_seen = last_seen
        self.daemon_last = daemon_last


# -- addresses --------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """Where a daemon listens: its address, the base URL requests understands, its token."""

    address: str
    base_url: str
    token: str | None

    @classmethod
    def from_address(cls, address: str, token: str | None = None) -> Endpoint:
        """``unix:///abs/path.sock`` (no token needed) or ``tcp://HOST:PORT`` (``[::1]`` for IPv6)."""
        if address.startswith("unix://"):
            return cls(address, "http+unix://" + quote(address[len("unix://"):], safe=""), None)
        if address.startswith("tcp://"):
            return cls(address, "http://" + address[len("tcp://"):].rstrip("/"), token)
        raise ValueError(f"unsupported daemon address {address!r}: use unix:///abs/path.sock or tcp://HOST:PORT")


def discover(data_dir: str | os.PathLike[str] | None = None) -> tuple[Endpoint, dict[str, Any]]:
    """The endpoint of the daemon serving ``data_dir`` (default: ``$CHEETAHCLAWS_HOME`` or
    ``~/.cheetahclaws``) and its discovery record; raises ``NotRunning`` without one."""
    layout = DataDir.resolve(data_dir)
    info = read_json(layout.discovery_file)
    if not isinstance(info, dict) or not isinstance(info.get("address"), str):
        raise NotRunning(f"no daemon discovery file at {layout.discovery_file}; is the daemon running?")
    token = None
    if info.get("token_path"):
        try:
            token = Path(info["token_path"]).read_text().strip()
        except OSError as exc:
            raise DaemonError(f"cannot read the daemon token at {info['token_path']}: {exc.strerror}") from None
    return Endpoint.from_address(info["address"], token), info


# -- the client -------------------------------------------------------------------------
class Client:
    """A connection to one daemon. Use one Client per thread (``requests`` sessions are not
    thread-safe); two Clients of the same ``kind`` and data dir share one client id.

    ``sessions`` and ``permissions`` hold typed helpers over ``call``.
    """

    def __init__(self, endpoint: Endpoint, *, kind: str = "cli", client_id: str | None = _UNSET,
                 id_dir: Path | None = None, timeout: float = 30.0,
                 rediscover: Callable[[], Endpoint] | None = None):
        """``client_id``: the id to present (default: the one saved in ``id_dir/<kind>.id``);
        ``id_dir``: where ids are saved (None: nowhere); ``rediscover``: how to find the
        daemon again after it restarts (``connect`` passes the discovery file)."""
        if not KIND_RE.match(kind):
            raise ValueError(f"client kind must match {KIND_RE.pattern}: {kind!r}")
        self.endpoint = endpoint
        self.kind = kind
        self.timeout = timeout
        self._rediscover = rediscover
        self._id_file = (Path(id_dir) / f"{kind}.id") if id_dir is not None else None
        self.client_id: str | None = self._load_client_id() if client_id is _UNSET else client_id
        self._http = requests_unixsocket.Session()
        # Serialises requests until the daemon has minted our id, so that two threads'
        # first requests (say a call and an event stream) do not get two different ids.
        self._id_lock = threading.Lock()
        self._next_id = 0
        self.sessions = Sessions(self)
        self.permissions = Permissions(self)

    @classmethod
    def connect(cls, address: str | None = None, *, token: str | None = None,
                data_dir: str | os.PathLike[str] | None = None, kind: str = "cli",
                persist_id: bool = True, timeout: float = 30.0) -> Client:
        """Connect to the daemon at ``address``, or to the one the discovery file of
        ``data_dir`` names (then a restarted daemon is found again, even on a new port or
        with a rotated token). The client id is kept in ``<data_dir>/clients/<kind>.id``
        unless ``persist_id`` is false. Nothing is sent until the first call."""
        layout = DataDir.resolve(data_dir)
        rediscover = None
        if address is None:
            endpoint, _ = discover(data_dir)
            if token is None:
                def rediscover() -> Endpoint:
                    return discover(data_dir)[0]
            else:
                endpoint = Endpoint(endpoint.address, endpoint.base_url, token)
        else:
            endpoint = Endpoint.from_address(address, token)
        return cls(endpoint, kind=kind, id_dir=layout.clients_dir if persist_id else None, timeout=timeout,
                   rediscover=rediscover)

    def clone(self) -> Client:
        """Another Client on the same daemon with the same kind and client id, for another
        thread (say an event stream beside the calls). Clone after the first call, once the
        daemon has minted the id, or the two may be given different ids."""
        return Client(self.endpoint, kind=self.kind, client_id=self.client_id,
                      id_dir=self._id_file.parent if self._id_file is not None else None,
                      timeout=self.timeout, rediscover=self._rediscover)

    # -- client id --------------------------------------------------------------------------
    def _load_client_id(self) -> str | None:
        if self._id_file is None:
            return None
        try:
            value = self._id_file.read_text().strip()
        except OSError:
            return None
        return value or None

    def _remember_client_id(self, value: str | None) -> None:
        if not value or value == self.client_id:
            return
        self.client_id = value
        if self._id_file is None:
            return
        try:
            self._id_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self._id_file, (value + "\n").encode())
        except OSError as exc:
            # The id still works for this process; only resuming it next time is lost.
            log.warning("cannot save the client id to %s: %s", self._id_file, exc)

    def is_originator(self, event: dict[str, Any]) -> bool:
        """True when this client caused ``event`` (only its originator's copy names the id)."""
        originator = event.get("originator") or {}
        return self.client_id is not None and originator.get("client_id") == self.client_id

    # -- HTTP -------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        """The contract's request headers: API version, kind, client id, bearer token (TCP)."""
        headers = {API_VERSION_HEADER: API_VERSION, "X-Client-Kind": self.kind}
        if self.client_id:
            headers["X-Client-Id"] = self.client_id
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        return headers

    def request(self, verb: str, path: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> requests.Response:
        """One HTTP request with the contract's headers; raises the typed exception for an
        HTTP-level refusal (401, 426, 429, ...) and ``NotRunning`` when nobody answers."""
        kwargs.setdefault("timeout", self.timeout)
        if self.client_id is None:
            with self._id_lock:
                return self._send(verb, path, headers, kwargs)
        return self._send(verb, path, headers, kwargs)

    def _send(self, verb: str, path: str, headers: dict[str, str] | None, kwargs: dict[str, Any]) -> requests.Response:
        try:
            response = self._http.request(verb, self.endpoint.base_url + path,
                                          headers={**self.headers(), **(headers or {})}, **kwargs)
        except requests.Timeout:
            raise NoAnswer(f"the daemon at {self.endpoint.address} did not answer within "
                           f"{kwargs['timeout']} s") from None
        except requests.ConnectionError as exc:
            raise NotRunning(f"no daemon answers at {self.endpoint.address} ({reason_of(exc)})") from None
        self._remember_client_id(response.headers.get("X-Client-Id"))
        raise_for_http_status(response)
        return response

    def post_rpc(self, payload: Any) -> Any:
        """POST ``payload`` (a request object or a batch array) to ``/rpc``; returns the
        decoded reply, or None when the daemon answers nothing (notifications)."""
        response = self.request("POST", "/rpc", data=json.dumps(payload).encode(),
                                headers={"Content-Type": "application/json"})
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(f"/rpc answered HTTP {response.status_code} with a body that is not JSON") from None

    # -- JSON-RPC ---------------------------------------------------------------------------
    def call(self, method: str, /, *args: Any, **params: Any) -> Any:
        """Call ``method`` with by-position ``args`` or by-name ``params`` and return its
        result; a JSON-RPC error raises its ``RpcCallError`` subclass."""
        if args and params:
            raise TypeError("pass params by position or by name, not both")
        reply = self.post_rpc(self._request(method, list(args) if args else params))
        if not isinstance(reply, dict) or not ("result" in reply or "error" in reply):
            raise ProtocolError(f"{method}: expected a JSON-RPC response object, got {reply!r:.200}")
        if "error" in reply:
            raise rpc_error(reply["error"])
        return reply["result"]

    def notify(self, method: str, /, **params: Any) -> None:
        """Send a notification: the daemon runs ``method`` and answers nothing, not even errors."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params:
            message["params"] = params
        self.post_rpc(message)

    def batch(self, calls: Iterable[tuple[str, dict[str, Any] | list[Any] | None]]) -> list[Any]:
        """Several calls in one HTTP request: ``[(method, params), ...]``. Returns their
        results in order, with an ``RpcCallError`` instance (not raised) for each that failed."""
        messages = [self._request(method, params) for method, params in calls]
        replies = self.post_rpc(messages)
        if isinstance(replies, dict):  # the daemon refused the batch as a whole (e.g. empty)
            raise rpc_error(replies.get("error"))
        by_id = {reply.get("id"): reply for reply in replies or [] if isinstance(reply, dict)}
        results: list[Any] = []
        for message in messages:
            reply = by_id.get(message["id"])
            if reply is None:
                raise ProtocolError(f"the batch reply has no response for {message['method']} (id {message['id']})")
            results.append(rpc_error(reply["error"]) if "error" in reply else reply.get("result"))
        return results

    def _request(self, method: str, params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        if params:
            message["params"] = params
        return message

    # -- shortcuts --------------------------------------------------------------------------
    def ping(self) -> str:
        """``system.ping``: ``"pong"`` when the daemon is alive."""
        return self.call("system.ping")

    def status(self) -> dict[str, Any]:
        """``system.status``: pid, version, address, uptime, ``last_event_id``, counters."""
        return self.call("system.status")

    def last_event_id(self) -> int:
        """The newest event id; pass it as ``since`` to see only what happens after now."""
        return int(self.status()["last_event_id"])

    # -- events -----------------------------------------------------------------------------
    def events(self, since: int | None = None, *, types: Iterable[str] | None = None,
               session: str | None = None, reconnect: bool = True, raise_on_gap: bool = False,
               max_backoff_s: float = 10.0, read_timeout: float | None = 60.0,
               on_reconnect: Callable[[str], None] | None = None) -> EventStream:
        """Follow ``/events`` as an iterator of event dicts (``id, ts, type, data``, maybe
        ``session_id`` and ``originator``).

        ``since``: replay every retained event after this id first (None: only events
        published after this call).
        ``types`` / ``session`` filter on the daemon's side. After a dropped connection or a
        daemon restart the stream reconnects with ``Last-Event-ID`` and jittered exponential
        backoff (up to ``max_backoff_s``), so nothing is lost or repeated; ``on_reconnect``
        is told about each drop and recovery in words. A ``gap`` event (ids the daemon no
        longer has) is yielded like any other, or raised as ``EventGap`` when
        ``raise_on_gap``. ``shutdown`` is yielded too, then the stream waits for the daemon
        to come back (with ``reconnect=False`` it ends there, and a drop raises). The first
        connection is not retried, so a wrong address fails at once.
        """
        if since is None:
            # Pin "now" here, not at the first read, so that nothing published in between is
            # missed, and so that a later reconnect resumes from here without a hole.
            since = self.last_event_id()
        return EventStream(self, since, types=list(types or ()), session=session, reconnect=reconnect,
                           raise_on_gap=raise_on_gap, max_backoff_s=max_backoff_s, read_timeout=read_timeout,
                           on_reconnect=on_reconnect)

    def _open_stream(self, last_id: int | None, query: dict[str, str],
                     read_timeout: float | None) -> requests.Response:
        path = "/events" + (f"?{urlencode(query)}" if query else "")
        extra = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        return self.request("GET", path, headers=extra, stream=True, timeout=(self.timeout, read_timeout))

    def refresh_endpoint(self) -> bool:
        """Re-read the discovery file (when connected through it); True if the address or
        token changed, e.g. a restarted daemon on a new port or a rotated token."""
        if self._rediscover is None:
            return False
        try:
            endpoint = self._rediscover()
        except DaemonError:
            return False
        changed = endpoint != self.endpoint
        self.endpoint = endpoint
        return changed

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


#: Failures after which a stream tries again: the daemon went away or is restarting.
_TRANSIENT = (NotRunning, NoAnswer, requests.RequestException, ConnectionError)


class EventStream:
    """An iterator over a daemon's events that survives drops and restarts.

    ``last_id`` is the id of the newest event delivered so far (a ``gap`` counts: it
    carries the last missed id). ``close()`` ends the iteration; it is also a context
    manager. Made by ``Client.events``.
    """

    INITIAL_BACKOFF_S = 0.1

    def __init__(self, client: Client, since: int, *, types: list[str], session: str | None,
                 reconnect: bool, raise_on_gap: bool, max_backoff_s: float, read_timeout: float | None,
                 on_reconnect: Callable[[str], None] | None):
        self._client = client
        self.last_id: int = since
        self._query = {key: value for key, value in (("types", ",".join(types)), ("session", session or ""))
                       if value}
        self._reconnect = reconnect
        self._raise_on_gap = raise_on_gap
        self._max_backoff_s = max_backoff_s
        self._read_timeout = read_timeout
        self._on_reconnect = on_reconnect or (lambda message: log.info("%s", message))
        self._closed = threading.Event()
        self._response: requests.Response | None = None
        self._frames: Iterator[Any] | None = None
        self._opened_once = False
        self._delivered_since_connect = False
        self._backoff = self.INITIAL_BACKOFF_S
        self._reader: int | None = None

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        self._reader = threading.get_ident()
        while not self._closed.is_set():
            if self._frames is None:
                self._open()
                continue
            try:
                frame = next(self._frames)
            except StopIteration:  # the daemon ended the stream: shutdown, token rotation
                self._drop("the daemon closed the event stream")
                continue
            except _TRANSIENT as exc:
                if self._closed.is_set():
                    break
                self._drop(f"event stream lost ({reason_of(exc)})", exc)
                continue
            if self._closed.is_set():  # closed from another thread while this frame was in flight
                break
            event = self._decode(frame)
            self._delivered_since_connect = True
            self._backoff = self.INITIAL_BACKOFF_S
            if event.get("id") is not None:
                self.last_id = event["id"]
            if event.get("type") == "gap" and self._raise_on_gap:
                raise EventGap(event)
            return event
        self._release()
        raise StopIteration

    @staticmethod
    def _decode(frame: Any) -> dict[str, Any]:
        try:
            event = json.loads(frame.data)
        except ValueError:
            raise ProtocolError(f"event frame is not JSON: {frame.data[:200]!r}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ProtocolError(f"event frame is not an event object: {frame.data[:200]!r}")
        return event

    def _open(self) -> None:
        while not self._closed.is_set():
            try:
                self._connect()
                return
            except _TRANSIENT as exc:
                if not (self._opened_once and self._reconnect):
                    raise
                failure: Exception = exc
            except Unauthenticated:
                # A rotated token, or a daemon restarted with a new one: read it again.
                if not (self._opened_once and self._reconnect and self._client.refresh_endpoint()):
                    raise
                continue
            except HttpStatusError as exc:  # 503: at its connection cap, try again later
                if not (self._opened_once and self._reconnect and exc.status == 503):
                    raise
                failure = exc
            self._pause(f"cannot reconnect ({reason_of(failure)})")
            self._client.refresh_endpoint()

    def _connect(self) -> None:
        client = self._client
        if self._opened_once:
            newest = client.last_event_id()
            if newest < self.last_id:
                raise EventLogReset(self.last_id, newest)
        response = client._open_stream(self.last_id, self._query, self._read_timeout)
        # chunk_size=None: hand over each chunk as it arrives, never wait to fill a buffer.
        self._frames = sseclient.SSEClient(response.iter_content(chunk_size=None)).events()
        self._response = response
        self._delivered_since_connect = False
        if self._opened_once:
            self._on_reconnect(f"reconnected to {client.endpoint.address}, resuming after event {self.last_id}")
        self._opened_once = True

    def _drop(self, why: str, exc: BaseException | None = None) -> None:
        self._release()
        if self._closed.is_set():
            return
        if not self._reconnect:
            self._closed.set()
            if exc is not None:
                raise NotRunning(why) from None
            return
        if self._delivered_since_connect:
            self._on_reconnect(f"{why}; reconnecting")
        else:  # a connection that ends before delivering anything: do not spin on it
            self._pause(why)

    def _pause(self, why: str) -> None:
        delay = self._backoff * (0.5 + random.random())
        self._on_reconnect(f"{why}; retrying in {delay:.1f} s")
        self._closed.wait(delay)
        self._backoff = min(self._backoff * 2, self._max_backoff_s)

    def _release(self) -> None:
        response, self._response, self._frames = self._response, None, None
        if response is not None:
            response.close()

    def close(self) -> None:
        """Stop iterating and close the connection. From another thread than the reader,
        the reader stops at its next frame or heartbeat and closes the connection itself."""
        self._closed.set()
        if self._reader in (None, threading.get_ident()):
            self._release()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# -- typed helpers ----------------------------------------------------------------------
def _params(**values: Any) -> dict[str, Any]:
    """Keyword params without the ones left at None (the daemon applies its defaults)."""
    return {name: value for name, value in values.items() if value is not None}


class Sessions:
    """``session.*``: create and drive agent sessions (``client.sessions``)."""

    def __init__(self, client: Client):
        self._client = client

    def create(self, runtime: str, cwd: str | os.PathLike[str], *, name: str | None = None,
               mode: str | None = None, approve_via: str | None = None, env: dict[str, str] | None = None,
               args: list[str] | None = None, restart: str | None = None,
               max_turn_s: float | None = None) -> dict[str, Any]:
        """Start a session of ``runtime`` (e.g. ``"demo"``) in ``cwd``; returns the session.

        ``mode``: ``"interactive"`` (default) or ``"unattended"`` (then ``approve_via``:
        ``deny``, ``allow`` or a client kind answers its permission requests)."""
        return self._client.call("session.create", **_params(
            runtime=runtime, cwd=os.fspath(Path(cwd).absolute()), name=name, mode=mode, approve_via=approve_via,
            env=env, args=args, restart=restart, max_turn_s=max_turn_s))

    def send(self, session_id: str, text: str, *, message_id: str | None = None) -> dict[str, Any]:
        """Start a turn (this client becomes its originator); returns ``{session_id, turn_id,
        message_id}`` at once, the output arrives as events. Resending the same
        ``message_id`` never starts a second turn."""
        return self._client.call("session.send", **_params(session_id=session_id, text=text,
                                                           message_id=message_id))

    def turn(self, session_id: str, text: str, *, message_id: str | None = None,
             read_timeout: float | None = 60.0) -> Iterator[dict[str, Any]]:
        """Send ``text`` and yield the session's events until this turn's ``turn_done``
        (which is yielded last). Nothing is missed: the stream starts before the send."""
        stream = self._client.events(self._client.last_event_id(), session=session_id,
                                     read_timeout=read_timeout)
        with stream:
            turn_id = self.send(session_id, text, message_id=message_id)["turn_id"]
            for event in stream:
                yield event
                if event["type"] == "turn_done" and event_turn_id(event) == turn_id:
                    return

    def cancel(self, session_id: str, turn_id: str | None = None) -> dict[str, Any]:
        """Cancel the session's running turn, or its queued turn ``turn_id`` (the session
        stays); returns ``{session_id, cancelled, turn_id}``."""
        return self._client.call("session.cancel", **_params(session_id=session_id, turn_id=turn_id))

    def close(self, session_id: str) -> Any:
        """Stop the session's runtime process; the session's history stays readable."""
        return self._client.call("session.close", session_id=session_id)

    def list(self) -> list[dict[str, Any]]:
        """Every session the daemon knows, newest first."""
        result = self._client.call("session.list")
        return result["sessions"] if isinstance(result, dict) else result

    def get(self, session_id: str) -> dict[str, Any]:
        """One session: state, runtime, cwd, timestamps, the tail of its runtime's stderr."""
        return self._client.call("session.get", session_id=session_id)

    def history(self, session_id: str, **filters: Any) -> dict[str, Any]:
        """The session's events from the durable log (``filters``: as ``session.history`` takes)."""
        return self._client.call("session.history", session_id=session_id, **filters)

    def iter_history(self, session_id: str, since: int = 0) -> Iterator[dict[str, Any]]:
        """Every stored event of the session after id ``since``, oldest first, paging
        through ``session.history`` until the log has no more."""
        cursor: int | None = since
        while cursor is not None:
            page = self.history(session_id, since=cursor, limit=1000)
            yield from page["events"]
            cursor = page["next_since"]

    def runtimes(self) -> Any:
        """The runtimes this daemon can start, with version and path where known."""
        return self._client.call("session.runtimes")


def event_turn_id(event: dict[str, Any]) -> str | None:
    """The turn an event belongs to, if it names one."""
    data = event.get("data")
    return data.get("turn_id") if isinstance(data, dict) else None


class Permissions:
    """``permission.*``: answer the permission requests this client originated
    (``client.permissions``)."""

    def __init__(self, client: Client):
        self._client = client

    def pending(self) -> list[dict[str, Any]]:
        """This client's own pending requests (others' are never listed)."""
        return self._client.call("permission.list")["pending"]

    def get(self, request_id: str) -> dict[str, Any]:
        """One of this client's requests, pending or resolved, with its ``state``."""
        return self._client.call("permission.get", request_id=request_id)

    def answer(self, request_id: str, approve: bool, *, reason: str | None = None,
               remember: bool | None = None) -> dict[str, Any]:
        """Approve or deny; raises ``NotOriginator`` when no request of this client has that id
        and ``UnknownRequest`` when it is already resolved."""
        result = _params(approve=approve, reason=reason, remember=remember)
        return self._client.call("permission.answer", request_id=request_id, result=result)

    def approve(self, request_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """``answer(request_id, True)``."""
        return self.answer(request_id, True, reason=reason)

    def deny(self, request_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """``answer(request_id, False)``."""
        return self.answer(request_id, False, reason=reason)

    def refresh_timeout(self, request_id: str, extend_s: float = 600) -> dict[str, Any]:
        """Push the request's deadline back by ``extend_s`` seconds (capped by the daemon)."""
        return self._client.call("permission.refresh_timeout", request_id=request_id, extend_s=extend_s)

    def demo(self, tool: str = "Bash", input: dict[str, Any] | None = None, *, rationale: str | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        """Create a request originated by this client, to try the flow end to end."""
        return self._client.call("permission.demo", **_params(tool=tool, input=input, rationale=rationale,
                                                              timeout_s=timeout_s))


# -- HTTP status handling -----------------------------------------------------------------
def raise_for_http_status(response: requests.Response) -> None:
    """Raise the typed exception for an HTTP-level refusal; JSON-RPC errors (200, or 403
    carrying a JSON-RPC body) pass through to be raised by the caller as RPC errors."""
    status = response.status_code
    if status < 400 or (status == 403 and _is_rpc_body(response)):
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if status == 401:
        raise Unauthenticated(status, body, "the daemon refused our credentials (HTTP 401): "
                                            "wrong or missing token, or another user's socket")
    if status == 426:
        raise VersionMismatch(status, body)
    if status == 429:
        retry = response.headers.get("Retry-After")
        raise RateLimited(status, body, float(retry) if retry else None)
    raise HttpStatusError(status, body)


def _is_rpc_body(response: requests.Response) -> bool:
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("jsonrpc") == "2.0"


def reason_of(exc: BaseException) -> str:
    """A one-line reason for a connection failure, without urllib3's nested reprs."""
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
        inner = (getattr(inner, "reason", None) if isinstance(getattr(inner, "reason", None), BaseException)
                 else None) or inner.__cause__ or inner.__context__ or next(
                     (arg for arg in inner.args if isinstance(arg, BaseException)), None)
    return type(exc).__name__
