"""Client identities: ids the daemon mints, persists and resumes.

Owns: minting client ids (32 lowercase hex), resuming an id a client presents again, and
the crash-safe, bounded registry file. A client id is its holder's secret, so the daemon
keeps only keyed hashes of it (like a password store): ``client_key`` recognises the
holder, ``client_ref`` is a short public handle for events. Neither the registry file nor
any event, log or response to someone else contains a client id.

A freshly minted id is *provisional* (kept in a bounded in-memory LRU) until its holder
presents it again or it originates something; only then is it written to the daemon's
database. So a curl loop that never sends ``X-Client-Id`` cannot grow the registry.

An id belongs to one client kind: presented under another ``X-Client-Kind`` it is not
resumed (a new id is minted, as the reference does), and the recorded kind never changes,
because ``approve_via`` routes permission requests by kind. Presented with no kind it is
resumed under its recorded one.

The registry is bounded, and a flood of new ids must not push out the ids of clients in
use: when it is full, only records that are both idle (not seen for ``protect_recent_s``)
and not pinned (``in_use``: the originator of a pending permission request) are evicted,
least recently seen first. When none is, the newcomer is not confirmed: its id keeps
working from memory and is confirmed at a later presentation, once there is room.

A client can be named by its ``client_ref`` (a permission delegation names its delegate
so): the registry keeps each record's ref, learnt when its holder presents the id, and
finds a client by it (``find_by_ref``).

Must not: authenticate anyone (auth does that first), know about HTTP headers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .events import Originator
from .lru import remember
from .records import RecordsNotStored, RecordTable
from .safe_paths import read_private
from .storage import atomic_write

log = logging.getLogger("cc_daemon.identity")

CLIENT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CLIENT_KIND_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
CLIENT_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def clean_kind(kind: str | None) -> str | None:
    """The client kind if it is a short plain word, else None (it is free text from the wire)."""
    return kind if kind and CLIENT_KIND_RE.match(kind) else None


@dataclass
class ClientRecord:
    """What the registry keeps about a client: never the id itself."""

    client_key: str
    kind: str | None
    created_at: float
    last_seen: float
    #: Its public handle; None for a record written before refs were kept, until its holder returns.
    client_ref: str | None = None


@dataclass
class Caller:
    """The authenticated caller of one request, as methods see it (in memory only)."""

    client_id: str
    client_key: str
    client_ref: str
    kind: str | None
    transport: str
    peer: str

    def originator(self) -> Originator:
        return Originator(self.client_key, self.client_ref, self.kind)


class ClientRegistry:
    """Thread-safe registry of known clients, persisted in a ``RecordTable``."""

    def __init__(self, table: RecordTable | None, secret: bytes, *, max_clients: int = 10_000,
                 max_provisional: int = 10_000, idle_expiry_s: float = 30 * 86400,
                 protect_recent_s: float = 3600.0, clock=time.time):
        self._table = table
        self._secret = secret
        self._max_clients = max_clients
        self._max_provisional = max_provisional
        self._idle_expiry_s = idle_expiry_s
        self._protect_recent_s = protect_recent_s
        #: Keys that must stay resumable whatever their age (set by the daemon's wiring: the
        #: originators of pending permission requests). Called only when the registry is full.
        self.in_use: Callable[[], set[str]] = set
        self._clock = clock
        self._lock = threading.Lock()
        self._known: OrderedDict[str, ClientRecord] = OrderedDict()
        self._provisional: OrderedDict[str, ClientRecord] = OrderedDict()
        self._changed: set[str] = set()
        self._removed: set[str] = set()
        #: client_ref -> client_key of the records that know their ref (stale entries are skipped).
        self._by_ref: dict[str, str] = {}
        self._load()

    # -- hashing ----------------------------------------------------------------------------
    def key_of(self, client_id: str) -> str:
        return hmac.new(self._secret, b"key:" + client_id.encode(), hashlib.sha256).hexdigest()

    def ref_of(self, client_id: str) -> str:
        """The public handle of a client id: stable, and useless for acting as that client."""
        return hmac.new(self._secret, b"ref:" + client_id.encode(), hashlib.sha256).hexdigest()[:16]

    # -- public -----------------------------------------------------------------------------
    def resolve(self, presented_id: str | None, kind: str | None, transport: str, peer: str) -> Caller:
        """The caller behind ``presented_id`` (resumed), or one with a freshly minted id."""
        kind = clean_kind(kind)
        if presented_id:
            record, confirmed_now = self._resume(self.key_of(presented_id), kind, self.ref_of(presented_id))
            if confirmed_now:
                self.flush()  # the moment the holder starts relying on the id: write it now
            if record is not None:
                return self._caller(presented_id, record, transport, peer)
        client_id = secrets.token_hex(16)
        now = self._clock()
        record = ClientRecord(self.key_of(client_id), kind, now, now, self.ref_of(client_id))
        with self._lock:  # not findable by ref until presented again: a curl loop grows no index
            remember(self._provisional, record.client_key, record, self._max_provisional)
        return self._caller(client_id, record, transport, peer)

    def find_by_ref(self, client_ref: str) -> Originator | None:
        """The client whose public handle is ``client_ref``, or None. A provisional one is
        confirmed: whoever names it expects it to survive a restart."""
        with self._lock:
            key = self._by_ref.get(client_ref)
            record = self._known.get(key) or self._provisional.get(key) if key is not None else None
            if record is None:
                self._by_ref.pop(client_ref, None)
                return None
            confirmed = key in self._provisional and self._remember(record)
        if confirmed:
            self.flush()
        return Originator(record.client_key, client_ref, record.kind)

    def confirm(self, caller: Caller) -> None:
        """Keep ``caller``'s id across restarts (it originated something worth resuming)."""
        with self._lock:
            record = self._provisional.get(caller.client_key)
            confirmed = record is not None and self._remember(record)
        if confirmed:
            self.flush()

    def is_known(self, client_id: str) -> bool:
        key = self.key_of(client_id)
        with self._lock:
            return key in self._known or key in self._provisional

    def count(self) -> int:
        with self._lock:
            return len(self._known)

    def flush(self) -> bool:
        """Write what changed since the last write, in one transaction. When the store
        refuses (disk full), the changes stay pending for the next flush and requests go on
        being served: an id that is not on disk yet only fails to survive a restart."""
        with self._lock:
            self._expire_idle()
            upserts = {key: asdict(self._known[key]) for key in self._changed if key in self._known}
            removed = self._removed - set(upserts)
            self._changed, self._removed = set(), set()
        if self._table is None:
            return True
        try:
            self._table.write(upserts, removed)
        except RecordsNotStored as exc:
            with self._lock:
                self._changed.update(upserts)
                self._removed.update(key for key in removed if key not in self._known)
            log.warning("client registry not written (%s); kept in memory and retried at the next flush", exc)
            return False
        return True

    # -- internals --------------------------------------------------------------------------
    def _caller(self, client_id: str, record: ClientRecord, transport: str, peer: str) -> Caller:
        return Caller(client_id, record.client_key, self.ref_of(client_id), record.kind, transport, peer)

    def _resume(self, key: str, kind: str | None, ref: str) -> tuple[ClientRecord | None, bool]:
        """The record of ``key`` seen now, and whether this presentation confirmed it; None
        for an unknown id or one presented under another kind."""
        now = self._clock()
        with self._lock:
            record = self._known.get(key) or self._provisional.get(key)
            if record is None or (kind is not None and kind != record.kind):
                return None, False
            record.last_seen = now
            if record.client_ref is None:
                record.client_ref = ref
            self._by_ref[ref] = key
            if len(self._by_ref) > 2 * (self._max_clients + self._max_provisional):
                self._reindex_refs()
            if key in self._known:
                self._known.move_to_end(key)
                self._changed.add(key)
                return record, False
            self._provisional.move_to_end(key)
            return record, self._remember(record)

    def _remember(self, record: ClientRecord) -> bool:
        """Move a provisional record into the registry, making room by evicting idle records
        only; False (and the record stays provisional) when every record is in use."""
        if len(self._known) >= self._max_clients and not self._evict_idle(len(self._known) - self._max_clients + 1):
            log.warning("client registry full (%d records, none idle): a new client id stays in memory only",
                        len(self._known))
            return False
        del self._provisional[record.client_key]
        self._known[record.client_key] = record
        self._changed.add(record.client_key)
        return True

    def _evict_idle(self, count: int) -> bool:
        """Evict ``count`` records, least recently seen first, among those idle and not in use."""
        horizon = self._clock() - self._protect_recent_s
        pinned = self.in_use()
        idle: list[str] = []
        for key, record in self._known.items():
            if record.last_seen >= horizon or len(idle) == count:
                break  # ordered by last presentation: everything after this one is as recent
            if key not in pinned:
                idle.append(key)
        if len(idle) < count:
            return False
        for key in idle[:count]:
            del self._known[key]
            self._removed.add(key)
        return True

    def _reindex_refs(self) -> None:
        """Drop the refs of records evicted since (they are skipped, not removed, on eviction)."""
        self._by_ref = {record.client_ref: key for records in (self._known, self._provisional)
                        for key, record in records.items() if record.client_ref is not None}

    def _expire_idle(self) -> None:
        horizon = self._clock() - self._idle_expiry_s
        pinned = self.in_use()
        for key in [key for key, record in self._known.items() if record.last_seen < horizon and key not in pinned]:
            del self._known[key]
            self._removed.add(key)

    def _load(self) -> None:
        records = self._table.load() if self._table is not None else {}
        for key, entry in sorted(records.items(), key=lambda item: item[1].get("last_seen", 0)):
            try:
                record = ClientRecord(key, clean_kind(entry.get("kind")), float(entry["created_at"]),
                                      float(entry["last_seen"]), entry.get("client_ref"))
            except (KeyError, TypeError, ValueError):
                self._removed.add(key)
                continue
            if CLIENT_KEY_RE.match(record.client_key):
                self._known[record.client_key] = record
                if isinstance(record.client_ref, str):
                    self._by_ref[record.client_ref] = record.client_key
        self._expire_idle()


def load_or_create_key(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (0600), created on first use."""
    try:
        key = read_private(path, secret=True)
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    atomic_write(path, key)
    return key
