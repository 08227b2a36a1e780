"""Client identities: ids the daemon mints, persists and resumes.

Owns: minting client ids (32 lowercase hex), resuming an id a client presents again,
the public ``client_ref`` derived from an id (a truncated keyed hash, so events can say
who did something without handing out the id, which is its holder's secret), and the
crash-safe, bounded registry file.

A freshly minted id is *provisional* (kept in a bounded in-memory LRU) until its holder
presents it again or it originates something; only then is it written to disk. So a
curl loop that never sends ``X-Client-Id`` cannot grow the registry file.

Must not: authenticate anyone (auth does that first), know about HTTP headers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from .events import Originator
from .storage import atomic_write, atomic_write_json, read_json

CLIENT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CLIENT_KIND_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")


def clean_kind(kind: str | None) -> str | None:
    """The client kind if it is a short plain word, else None (it is free text from the wire)."""
    return kind if kind and CLIENT_KIND_RE.match(kind) else None


@dataclass
class Client:
    client_id: str
    kind: str | None
    created_at: float
    last_seen: float


@dataclass
class Caller:
    """The authenticated caller of one request, as methods see it."""

    client_id: str
    client_ref: str
    kind: str | None
    transport: str
    peer: str

    def originator(self) -> Originator:
        return Originator(self.client_id, self.client_ref, self.kind)


class ClientRegistry:
    """Thread-safe registry of known clients, persisted to a JSON file."""

    def __init__(self, path: Path | None, ref_key: bytes, *, max_clients: int = 10_000,
                 max_provisional: int = 10_000, idle_expiry_s: float = 30 * 86400, clock=time.time):
        self._path = path
        self._ref_key = ref_key
        self._max_clients = max_clients
        self._max_provisional = max_provisional
        self._idle_expiry_s = idle_expiry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._known: OrderedDict[str, Client] = OrderedDict()
        self._provisional: OrderedDict[str, Client] = OrderedDict()
        self._dirty = False
        self._load()

    # -- public ---------------------------------------------------------------------------
    def resolve(self, presented_id: str | None, kind: str | None) -> Client:
        """The client behind ``presented_id``, or a freshly minted one."""
        kind = clean_kind(kind)
        now = self._clock()
        client = None
        with self._lock:
            if presented_id:
                client = self._known.get(presented_id)
                if client is not None:
                    client.last_seen = now
                    client.kind = kind or client.kind
                    self._known.move_to_end(presented_id)
                    self._dirty = True
                    return client
                client = self._provisional.pop(presented_id, None)
                if client is not None:
                    client.last_seen = now
                    client.kind = kind or client.kind
                    self._remember(client)
        if client is not None:
            # Written at once: this is the moment the holder starts relying on the id.
            self.flush()
            return client
        with self._lock:
            client = Client(secrets.token_hex(16), kind, now, now)
            self._provisional[client.client_id] = client
            while len(self._provisional) > self._max_provisional:
                self._provisional.popitem(last=False)
            return client

    def confirm(self, client_id: str) -> None:
        """Keep ``client_id`` across restarts (it originated something worth resuming)."""
        with self._lock:
            client = self._provisional.pop(client_id, None)
            if client is not None:
                self._remember(client)
        if client is not None:
            self.flush()

    def is_known(self, client_id: str) -> bool:
        with self._lock:
            return client_id in self._known or client_id in self._provisional

    def ref(self, client_id: str) -> str:
        """The public reference of a client id: stable, and useless for acting as that client."""
        return hmac.new(self._ref_key, client_id.encode(), hashlib.sha256).hexdigest()[:16]

    def count(self) -> int:
        with self._lock:
            return len(self._known)

    def flush(self) -> None:
        """Write the registry if it changed since the last write."""
        with self._lock:
            if not self._dirty or self._path is None:
                return
            self._expire_idle()
            payload = {"version": 1, "clients": [asdict(c) for c in self._known.values()]}
            self._dirty = False
        atomic_write_json(self._path, payload)

    # -- internals ------------------------------------------------------------------------
    def _remember(self, client: Client) -> None:
        self._known[client.client_id] = client
        while len(self._known) > self._max_clients:
            self._known.popitem(last=False)
        self._dirty = True

    def _expire_idle(self) -> None:
        horizon = self._clock() - self._idle_expiry_s
        for client_id in [cid for cid, c in self._known.items() if c.last_seen < horizon]:
            del self._known[client_id]

    def _load(self) -> None:
        if self._path is None:
            return
        payload = read_json(self._path)
        if not isinstance(payload, dict):
            return
        for entry in payload.get("clients", []):
            try:
                client = Client(str(entry["client_id"]), clean_kind(entry.get("kind")),
                                float(entry["created_at"]), float(entry["last_seen"]))
            except (KeyError, TypeError, ValueError):
                continue
            if CLIENT_ID_RE.match(client.client_id):
                self._known[client.client_id] = client
        self._expire_idle()


def load_or_create_key(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (0600), created on first use."""
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    atomic_write(path, key)
    return key
