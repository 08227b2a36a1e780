"""The Python client of cc_daemon: find a daemon, call methods, follow events.

Owns: locating a running daemon (discovery file, or an explicit ``unix://`` / ``tcp://``
address and token), the HTTP session over either transport (``requests`` plus the
maintained ``requests-unixsocket`` adapter), the client id kept per client kind, typed
exceptions for every error the daemon can answer, and an event iterator that reconnects
with ``Last-Event-ID`` and surfaces gaps.

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
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlencode

import requests
import requests_unixsocket
import sseclient

from . import API_VERSION, API_VERSION_HEADER
from .storage import DataDir, atomic_write, read_json

_UNSET = object()


# -- exceptions -------------------------------------------------------------------------
class DaemonError(Exception):
    """Anything that went wrong talking to the daemon."""


class NotRunning(DaemonError):
    """No daemon answers at the address (or no discovery file names one)."""


class HttpStatusError(DaemonError):
    """An HTTP-level refusal; ``status`` and the JSON ``body`` say which."""

    def __init__(self, status: int, body: Any, message: str | None = None):
        super().__init__(message or f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Unauthenticated(HttpStatusError):
    """401: wrong or missing token, or a Unix-socket peer that is not the daemon's user."""


class RateLimited(HttpStatusError):
    """429: too many failed attempts; ``retry_after`` seconds until the next try."""

    def __init__(self, status: int, body: Any, retry_after: float | None):
        super().__init__(status, body, f"rate limited; retry after {retry_after} s")
        self.retry_after = retry_after


class VersionMismatch(HttpStatusError):
    """426: the daemon speaks another wire-contract version."""

    def __init__(self, status: int, body: Any):
        expected = body.get("expected") if isinstance(body, dict) else None
        super().__init__(status, body, f"the daemon speaks API version {expected!r}; "
                                       f"this client speaks {API_VERSION!r}")
        self.expected = expected


class RpcCallError(DaemonError):
    """A JSON-RPC error response. Subclasses name the codes the contract defines."""

    code: int = 0

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class ParseError(RpcCallError):
    code = -32700


class InvalidRequest(RpcCallError):
    code = -32600


class MethodNotFound(RpcCallError):
    code = -32601


class InvalidParams(RpcCallError):
    code = -32602


class InternalError(RpcCallError):
    code = -32603


class NotOriginator(RpcCallError):
    """Only the originator of a permission request may answer or refresh it."""

    code = -32001


class UnknownRequest(RpcCallError):
    """The permission request does not exist or is already resolved."""

    code = -32002


_ERRORS_BY_CODE = {cls.code: cls for cls in (ParseError, InvalidRequest, MethodNotFound, InvalidParams,
                                              InternalError, NotOriginator, UnknownRequest)}


def rpc_error(error: dict[str, Any]) -> RpcCallError:
    code = error.get("code", 0)
    return _ERRORS_BY_CODE.get(code, RpcCallError)(code, error.get("message", ""), error.get("data"))


class EventGap(DaemonError):
    """Raised by ``events(raise_on_gap=True)`` when the daemon no longer has some events."""

    def __init__(self, event: dict[str, Any]):
        data = event.get("data", {})
        super().__init__(f"events {data.get('missed_from')}..{data.get('missed_to')} are gone "
                         f"({data.get('reason')})")
        self.event = event


# -- addresses --------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """Where a daemon listens, as a base URL requests understands, plus its token."""

    address: str
    base_url: str
    token: str | None

    @classmethod
    def from_address(cls, address: str, token: str | None = None) -> Endpoint:
        if address.startswith("unix://"):
            return cls(address, "http+unix://" + quote(address[len("unix://"):], safe=""), None)
        if address.startswith("tcp://"):
            return cls(address, "http://" + address[len("tcp://"):], token)
        raise ValueError(f"unsupported daemon address {address!r}")


def discover(data_dir: str | os.PathLike[str] | None = None) -> tuple[Endpoint, dict[str, Any]]:
    """The endpoint of the daemon serving ``data_dir``, from its discovery file."""
    layout = DataDir.resolve(data_dir)
    info = read_json(layout.discovery_file)
    if not isinstance(info, dict) or "address" not in info:
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
    """A connection to one daemon. Thread-compatible: use one Client per thread."""

    def __init__(self, endpoint: Endpoint, *, kind: str = "cli", client_id: str | None | object = _UNSET,
                 id_dir: Path | None = None, timeout: float = 30.0):
        self.endpoint = endpoint
        self.kind = kind
        self.timeout = timeout
        self._id_file = (id_dir / f"{kind}.id") if id_dir is not None else None
        if client_id is _UNSET:
            client_id = self._load_client_id()
        self.client_id: str | None = client_id  # type: ignore[assignment]
        self._session = requests_unixsocket.Session()
        self._next_id = 0

    @classmethod
    def connect(cls, address: str | None = None, *, token: str | None = None,
                data_dir: str | os.PathLike[str] | None = None, kind: str = "cli",
                persist_id: bool = True, timeout: float = 30.0) -> Client:
        """Connect to the daemon at ``address``, or the one the discovery file names."""
        layout = DataDir.resolve(data_dir)
        if address is None:
            endpoint, _ = discover(data_dir)
            if token is not None:
                endpoint = Endpoint(endpoint.address, endpoint.base_url, token)
        else:
            endpoint = Endpoint.from_address(address, token)
        return cls(endpoint, kind=kind, id_dir=layout.clients_dir if persist_id else None, timeout=timeout)

    # -- id persistence ---------------------------------------------------------------------
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
        if self._id_file is not None:
            self._id_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self._id_file, (value + "\n").encode())

    # -- HTTP -------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        headers = {API_VERSION_HEADER: API_VERSION, "X-Client-Kind": self.kind}
        if self.client_id:
            headers["X-Client-Id"] = self.client_id
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        return headers

    def request(self, verb: str, path: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> requests.Response:
        """One HTTP request with the contract's headers; raises on HTTP-level refusals."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self._session.request(verb, self.endpoint.base_url + path,
                                             headers={**self.headers(), **(headers or {})}, **kwargs)
        except requests.ConnectionError as exc:
            raise NotRunning(f"no daemon answers at {self.endpoint.address}: {exc}") from None
        self._remember_client_id(response.headers.get("X-Client-Id"))
        raise_for_http_status(response)
        return response

    def _post_rpc(self, payload: Any) -> Any:
        response = self.request("POST", "/rpc", data=json.dumps(payload).encode(),
                                headers={"Content-Type": "application/json"})
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- JSON-RPC ---------------------------------------------------------------------------
    def call(self, method: str, *args: Any, **params: Any) -> Any:
        """Call ``method`` (by-position ``args`` or by-name ``params``); raise on error."""
        if args and params:
            raise TypeError("pass params by position or by name, not both")
        reply = self._post_rpc(self._request(method, list(args) if args else params))
        if "error" in reply:
            raise rpc_error(reply["error"])
        return reply["result"]

    def notify(self, method: str, **params: Any) -> None:
        """Send a notification: the daemon runs it and answers nothing."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params:
            message["params"] = params
        self._post_rpc(message)

    def batch(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Several calls in one request; returns results in order, exceptions in place of errors."""
        requests_ = [self._request(method, params) for method, params in calls]
        replies = self._post_rpc(requests_) or []
        if isinstance(replies, dict):  # the daemon refused the batch as a whole
            raise rpc_error(replies["error"])
        by_id = {reply.get("id"): reply for reply in replies}
        out: list[Any] = []
        for message in requests_:
            reply = by_id.get(message["id"], {})
            out.append(rpc_error(reply["error"]) if "error" in reply else reply.get("result"))
        return out

    def _request(self, method: str, params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        if params:
            message["params"] = params
        return message

    # -- events -----------------------------------------------------------------------------
    def events(self, since: int | None = None, *, types: list[str] | None = None, session: str | None = None,
               reconnect: bool = True, raise_on_gap: bool = False, max_backoff_s: float = 10.0,
               read_timeout: float | None = 60.0) -> Iterator[dict[str, Any]]:
        """Yield events as dicts, resuming after drops and daemon restarts with ``Last-Event-ID``.

        ``gap`` events are yielded like any other (or raised as ``EventGap``); a
        ``shutdown`` event is yielded and then the iterator waits for the daemon to return
        (or stops, with ``reconnect=False``).
        """
        # Without a starting point, pin "now" so that a reconnect resumes without a hole.
        last_id = since if since is not None else self.call("system.status")["last_event_id"]
        backoff = 0.2
        while True:
            try:
                for event in self._stream_once(last_id, types, session, read_timeout):
                    backoff = 0.2
                    if event.get("type") == "gap" and raise_on_gap:
                        raise EventGap(event)
                    if event.get("id") is not None:
                        last_id = event["id"]
                    yield event
                    if event.get("type") == "shutdown" and not reconnect:
                        return
            except (NotRunning, requests.RequestException, ConnectionError):
                if not reconnect:
                    raise
            if not reconnect:
                return
            time.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, max_backoff_s)

    def _stream_once(self, last_id: int | None, types: list[str] | None, session: str | None,
                     read_timeout: float | None) -> Iterator[dict[str, Any]]:
        query = {}
        if types:
            query["types"] = ",".join(types)
        if session:
            query["session"] = session
        path = "/events" + (f"?{urlencode(query)}" if query else "")
        extra = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        try:
            response = self._session.get(self.endpoint.base_url + path, headers={**self.headers(), **extra},
                                         stream=True, timeout=(self.timeout, read_timeout))
        except requests.ConnectionError as exc:
            raise NotRunning(f"no daemon answers at {self.endpoint.address}: {exc}") from None
        self._remember_client_id(response.headers.get("X-Client-Id"))
        raise_for_http_status(response)
        with response:
            # chunk_size=None: hand over each chunk as it arrives, never wait to fill a buffer.
            for sse in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
                yield json.loads(sse.data)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def raise_for_http_status(response: requests.Response) -> None:
    status = response.status_code
    if status < 400 or status == 403 and _is_rpc_body(response):
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if status == 401:
        raise Unauthenticated(status, body, "the daemon refused our credentials (HTTP 401)")
    if status == 426:
        raise VersionMismatch(status, body)
    if status == 429:
        retry = response.headers.get("Retry-After")
        raise RateLimited(status, body, float(retry) if retry else None)
    raise HttpStatusError(status, body)


def _is_rpc_body(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").startswith("application/json") and b'"jsonrpc"' in response.content
