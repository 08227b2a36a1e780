"""A connection to one daemon: its HTTP connections, the client id, JSON-RPC calls.

Owns: the contract's request headers, the connection calls go over (``wire``, standard
library only) and, once a stream is opened, the ``requests`` session streams go over (with
the maintained ``requests-unixsocket`` adapter), the client id the daemon mints for this
client's kind (kept in a file so the next run resumes it), calls, notifications and
batches, and opening event streams.

Must not: import daemon internals; it speaks only the wire contract, like any frontend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import urlencode

from .. import API_VERSION, API_VERSION_HEADER
from ..storage import DataDir, atomic_write
from .endpoint import Endpoint, discover
from .exceptions import DaemonError, NoAnswer, NotRunning, ProtocolError, raise_for_http_status, reason_of, rpc_error
from .namespaces import Permissions, Sessions
from .stream import EventStream
from .wire import Reply, ReplyError, Wire

if TYPE_CHECKING:
    import requests

log = logging.getLogger("cc_daemon.client")

_UNSET: Any = object()

#: What a client kind may look like: it names a file under ``clients/``.
KIND_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,31}$")


class Client:
    """A connection to one daemon. Use one Client per thread (its connections are not
    thread-safe); two Clients of the same ``kind`` and data dir share one client id.

    ``sessions`` and ``permissions`` hold typed helpers over ``call``.
    """

    def __init__(self, endpoint: Endpoint, *, kind: str = "cli", client_id: str | None = _UNSET,
                 id_file: Path | None = None, timeout: float = 30.0,
                 rediscover: Callable[[], Endpoint] | None = None):
        """``client_id``: the id to present (default: the one saved in ``id_file``);
        ``id_file``: where the id is saved (None: nowhere); ``rediscover``: how to find the
        daemon again after it restarts (``connect`` passes the discovery file)."""
        if not KIND_RE.match(kind):
            raise ValueError(f"client kind must match {KIND_RE.pattern}: {kind!r}")
        self.endpoint = endpoint
        self.kind = kind
        self.timeout = timeout
        self._rediscover = rediscover
        self._id_file = id_file
        self.client_id: str | None = self._load_client_id() if client_id is _UNSET else client_id
        self._wire = Wire(endpoint.address)
        self._streams: Any = None  # a requests session, made by the first stream
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
        return cls(endpoint, kind=kind, id_file=layout.client_id_file(kind) if persist_id else None, timeout=timeout,
                   rediscover=rediscover)

    def clone(self) -> Client:
        """Another Client on the same daemon with the same kind and client id, for another
        thread (say an event stream beside the calls). Clone after the first call, once the
        daemon has minted the id, or the two may be given different ids."""
        return Client(self.endpoint, kind=self.kind, client_id=self.client_id, id_file=self._id_file,
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

    def request(self, verb: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
        """One HTTP request with the contract's headers, its whole reply read; raises the
        typed exception for an HTTP-level refusal (401, 426, 429, ...), ``NotRunning`` when
        nobody answers and ``NoAnswer`` when the daemon does not answer in time."""
        timeout = self.timeout if timeout is None else timeout
        with self._first_request_lock():
            try:
                reply = self._wire.exchange(verb, path, {**self.headers(), **(headers or {})}, body, timeout)
            except TimeoutError:
                raise NoAnswer(f"the daemon at {self.endpoint.address} did not answer within {timeout} s") from None
            except OSError as exc:
                raise NotRunning(f"no daemon answers at {self.endpoint.address} ({reason_of(exc)})") from None
            except ReplyError as exc:
                raise ProtocolError(str(exc)) from None
            return self._checked(reply)

    def _open_stream(self, last_id: int | None, query: dict[str, str],
                     read_timeout: float | None) -> requests.Response:
        import requests
        import requests_unixsocket

        path = "/events" + (f"?{urlencode(query)}" if query else "")
        headers = {**self.headers(), **({"Last-Event-ID": str(last_id)} if last_id is not None else {})}
        if self._streams is None:
            self._streams = requests_unixsocket.Session()
        with self._first_request_lock():
            try:
                response = self._streams.get(self.endpoint.base_url + path, headers=headers, stream=True,
                                             timeout=(self.timeout, read_timeout))
            except requests.Timeout:
                raise NoAnswer(f"the daemon at {self.endpoint.address} did not answer within "
                               f"{self.timeout} s") from None
            except requests.ConnectionError as exc:
                raise NotRunning(f"no daemon answers at {self.endpoint.address} ({reason_of(exc)})") from None
            return self._checked(response)

    def _first_request_lock(self) -> Any:
        """Until the daemon has minted our id, one request at a time, so that two threads'
        first requests (say a call and an event stream) do not get two different ids."""
        return self._id_lock if self.client_id is None else contextlib.nullcontext()

    def _checked(self, response: Any) -> Any:
        self._remember_client_id(response.headers.get("X-Client-Id"))
        raise_for_http_status(response)
        return response

    def post_rpc(self, payload: Any) -> Any:
        """POST ``payload`` (a request object or a batch array) to ``/rpc``; returns the
        decoded reply, or None when the daemon answers nothing (notifications)."""
        response = self.request("POST", "/rpc", body=json.dumps(payload).encode(),
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
        if endpoint.address != self.endpoint.address:
            self._wire.close()
            self._wire = Wire(endpoint.address)
        self.endpoint = endpoint
        return changed

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close this client's HTTP connections."""
        self._wire.close()
        if self._streams is not None:
            self._streams.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


