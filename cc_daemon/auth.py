"""Authentication: who may talk to the daemon at all, and the decision on every request.

Owns: the bearer token (created 0600 from its first byte, compared in constant time as
bytes, rotatable while the daemon runs), Unix-socket peer credentials (the peer's uid must
be ours), browser defences (Host and Origin checks), and the decision itself: which
failures the throttle (``throttle``) counts, and what goes to the audit log (``audit``).

Must not: know about HTTP, JSON-RPC or client identities; it answers "may this connection
/ request proceed, and if not, why" (a ``Denied``: the kind of refusal and a message for
humans; the transport says it in HTTP). The token never leaves this module in any log
line, event, metric or error.
"""

from __future__ import annotations

import base64
import enum
import hmac
import logging
import os
import secrets
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .audit import AuditLog
from .safe_paths import UnsafePath, make_private_dir, read_private
from .storage import atomic_write
from .throttle import Throttle, peer_key

log = logging.getLogger("cc_daemon.auth")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


# -- token ------------------------------------------------------------------------------
def new_token() -> str:
    """32 random bytes, URL-safe base64 without padding: 43 characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


class Presented(enum.Enum):
    """What a presented bearer token is to the daemon."""

    CURRENT = "current"
    #: The token that the current one replaced, less than ``ROTATED_NOTICE_S`` ago.
    ROTATED = "rotated"
    WRONG = "wrong"


class TokenStore:
    """The daemon's bearer token, on disk and in memory, kept in step."""

    #: How often the daemon looks for a hand-edited token file (see ``match``).
    FILE_CHECK_S = 1.0
    #: How long the token a rotation replaced is recognised as such (``Presented.ROTATED``,
    #: which is not counted as a guess) rather than as any wrong token. A rotation ends
    #: every stream opened with the old token, and each reconnects with it once before it
    #: rereads the token file (our client after at most 10 s of backoff); scripts between
    #: two calls and people updating a client by hand take minutes. Not longer: the distinct
    #: answer confirms to whoever presents that string, a thief of a leaked token included,
    #: that it was the daemon's token, which nobody needs once the clients have moved on.
    ROTATED_NOTICE_S = 600.0

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._token: bytes | None = None
        #: The token the current one replaced, and when (``clock``); only the latest one.
        self._rotated: tuple[bytes, float] | None = None
        self._file_stamp: tuple[int, int] | None = None
        self._read_failure: str | None = None  # the last reason the file could not be read, once logged
        #: Bumped on every change, so streams opened with an older token can be ended.
        self.generation = 0
        #: Called (without the lock) after the token changed underneath us.
        self.on_change: Callable[[], None] | None = None

    def load_or_create(self) -> None:
        """Read the token file, or create it. A file or directory another user could have
        prepared (see ``safe_paths``) raises ``UnsafePath``: their token would let them in."""
        with self._lock:
            make_private_dir(self.path.parent)
            if not self._read_file(strict=True):
                self._write_new()

    def rotate(self) -> None:
        """Replace the token now: the old one is refused from the next request on."""
        with self._lock:
            self._write_new()

    def match(self, presented: str) -> Presented:
        """Constant-time comparisons of a presented token (as bytes: ``compare_digest``
        raises on non-ASCII text); any garbage is simply ``WRONG``.

        A token that differs from the one in memory makes us look at the file first, so a
        token written there by hand is accepted from its first use. The file is not looked
        at for a matching token: a stat releases the GIL, and on every request that cost a
        tenth of the keep-alive throughput. The daemon calls ``reload_if_changed`` every
        ``FILE_CHECK_S`` instead, which retires a hand-replaced token within that time;
        ``rotate-token`` asks the daemon itself and takes effect at once.
        """
        try:
            candidate = presented.encode("ascii")
        except UnicodeEncodeError:
            return Presented.WRONG
        current = self._token  # one attribute read: always a whole token, old or new
        if current is not None and hmac.compare_digest(candidate, current):
            return Presented.CURRENT
        self.reload_if_changed()
        # Compared again whoever reloaded: another request or the timer may have done it
        # since our first read, and then our own reload finds nothing new.
        latest = self._token
        if latest is not current and latest is not None and hmac.compare_digest(candidate, latest):
            return Presented.CURRENT
        rotated = self._rotated
        if (rotated is not None and self._clock() - rotated[1] < self.ROTATED_NOTICE_S
                and hmac.compare_digest(candidate, rotated[0])):
            return Presented.ROTATED
        return Presented.WRONG

    def reload_if_changed(self) -> bool:
        """Follow the file if someone rewrote it (a user, an older CLI); True if the token changed."""
        # Compared without the lock first: the file almost never changes.
        stamp = file_stamp(self.path)
        if stamp is None or stamp == self._file_stamp:
            return False
        with self._lock:
            stamp = file_stamp(self.path)
            if stamp is None or stamp == self._file_stamp:
                return False
            before = self.generation
            self._read_file()
            changed = self.generation != before
        if changed and self.on_change is not None:
            self.on_change()
        return changed

    def _read_file(self, strict: bool = False) -> bool:
        # Stamped before reading: a write landing between the two then looks like a change
        # at the next check, instead of its token never being read.
        stamp = file_stamp(self.path)
        try:
            text = read_private(self.path, secret=True).decode("ascii").strip()
        except FileNotFoundError:
            return False  # before the first start, or between a user's delete and write
        except UnsafePath as exc:
            if strict:
                raise
            # A reloaded file passes the same checks as the first one: a symlink, or a file
            # that is someone else's or that others can read, is not followed.
            return self._unreadable(exc)
        except (OSError, UnicodeDecodeError) as exc:
            return self._unreadable(exc)
        self._read_failure = None
        if not text:
            return False
        self._replace(text.encode("ascii"))
        self._file_stamp = stamp
        return True

    def _unreadable(self, exc: Exception) -> bool:
        # A directory, unreadable, not text, not safe: the token in memory stays until a good
        # file is back. Looked at again every check (it may be mid-write), but said once.
        if str(exc) != self._read_failure:
            self._read_failure = str(exc)
            log.warning("cannot read the token file %s (%s); keeping the current token", self.path, exc)
        return False

    def _write_new(self) -> None:
        make_private_dir(self.path.parent)
        token = new_token()
        atomic_write(self.path, (token + "\n").encode("ascii"), mode=0o600)
        self._replace(token.encode("ascii"))
        self._file_stamp = file_stamp(self.path)

    def _replace(self, token: bytes) -> None:
        """Hold ``token`` from now on; a different one retires the one held (``ROTATED``)."""
        previous = self._token
        if previous == token:
            return
        if previous is not None:
            self._rotated = (previous, self._clock())
            self.generation += 1
        self._token = token


def file_stamp(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # not Path.stat: this runs on every failed match
    except OSError:  # missing, or its directory is not searchable: nothing to follow
        return None
    return st.st_ino, st.st_mtime_ns


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


# -- peer credentials -------------------------------------------------------------------
@dataclass(frozen=True)
class PeerCred:
    pid: int | None
    uid: int
    gid: int | None


def peer_credentials(sock: socket.socket) -> PeerCred | None:
    """The uid of the process at the other end of a Unix socket, from the kernel."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return PeerCred(pid, uid, gid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        # getpeereid(3) is LOCAL_PEERCRED underneath: struct xucred {u_int version; uid_t uid; ...}.
        local_peercred = getattr(socket, "LOCAL_PEERCRED", 0x001)
        raw = sock.getsockopt(0, local_peercred, struct.calcsize("IIh16I"))
        _version, uid = struct.unpack_from("II", raw)
        return PeerCred(None, uid, None)
    return None


# -- the decision -----------------------------------------------------------------------
class Refusal(enum.Enum):
    """The kinds of "no" auth answers."""

    MISSING_TOKEN = "missing_token"  # no bearer token at all: not a guess (an <img> load sends none)
    WRONG_TOKEN = "wrong_token"  # a bearer token that is not the daemon's: a guess
    TOKEN_ROTATED = "token_rotated"  # the token a rotation just replaced (TokenStore.ROTATED_NOTICE_S)
    WRONG_PEER = "wrong_peer"  # a Unix-socket peer that is not the daemon's user (or unknown)
    LOCKED_OUT = "locked_out"  # a guess from a peer that made too many of them lately
    HOST_NOT_ALLOWED = "host_not_allowed"  # a foreign Host header: DNS rebinding
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"  # a browser page from an origin not allow-listed


#: The failures the throttle counts, and refuses once a peer made too many: those that are
#: attempts to get in. A request without a token, or with the token a rotation just retired,
#: guesses nothing; a foreign uid is counted under its own key, so it only locks itself out.
GUESSES = frozenset({Refusal.WRONG_TOKEN, Refusal.WRONG_PEER})


@dataclass(frozen=True)
class Denied:
    """Why a request may not proceed."""

    kind: Refusal
    message: str  # for humans and the audit log
    retry_after: float | None = None  # LOCKED_OUT: seconds until the peer may try again


@dataclass
class Connection:
    """What auth knows about one accepted connection."""

    transport: str  # "tcp" or "unix"
    peer: str       # who, as the audit log names it: the client IP on TCP, "uid:N" on a Unix socket
    key: str        # whose failures count together (``throttle.peer_key``), and whose refusals the audit sums
    uid: int | None = None
    audited_ok: bool = False
    token_generation: int | None = None
    #: The TCP port this connection came in on: the port of the pages this listener serves.
    local_port: int | None = None

    @classmethod
    def tcp(cls, address: str, local_port: int | None = None) -> Connection:
        return cls("tcp", address, peer_key(address), local_port=local_port)

    @classmethod
    def unix(cls, uid: int | None) -> Connection:
        return cls("unix", f"uid:{uid}", f"uid:{uid}", uid)


class Authenticator:
    """Decides whether a request on a connection may proceed."""

    def __init__(self, tokens: TokenStore | None, audit: AuditLog, throttle: Throttle,
                 *, allowed_hosts: frozenset[str] = LOOPBACK_NAMES,
                 allowed_origins: frozenset[str] = frozenset(), daemon_uid: int | None = None):
        self.tokens = tokens
        self.audit = audit
        self.throttle = throttle
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid

    def check(self, conn: Connection, authorization: str | None,
              client_kind: str | None = None) -> Denied | None:
        """Credentials first: the right ones pass whatever others did (every local process
        shares the loopback key, so a lockout that applied to them would hand each of them a
        switch that locks the owner out). The throttle only counts and refuses guesses."""
        denied = self._credentials_refused(conn, authorization)
        if denied is None:
            if not conn.audited_ok:  # once per connection, not once per keep-alive request
                conn.audited_ok = True
                self._audit(conn, "ok", "peer uid matches" if conn.transport == "unix" else "token accepted",
                            client_kind)
            return None
        if denied.kind in GUESSES:
            retry_after = self.throttle.retry_after(conn.key)
            if retry_after is None:
                self.throttle.record_failure(conn.key)
            else:  # neither counted nor extending the lockout: it ends when it said it would
                denied = Denied(Refusal.LOCKED_OUT, "locked out after repeated failures", retry_after)
        return self._deny(conn, denied, client_kind)

    def _credentials_refused(self, conn: Connection, authorization: str | None) -> Denied | None:
        if conn.transport == "unix":
            if conn.uid is None:
                return Denied(Refusal.WRONG_PEER, "peer credentials unavailable")
            return None if conn.uid == self.daemon_uid else Denied(
                Refusal.WRONG_PEER, f"peer uid {conn.uid} is not the daemon's")
        token = bearer_token(authorization)
        if token is None:
            return Denied(Refusal.MISSING_TOKEN, "missing bearer token")
        presented = Presented.WRONG if self.tokens is None else self.tokens.match(token)
        if presented is Presented.ROTATED:
            return Denied(Refusal.TOKEN_ROTATED, "token rotated")
        if presented is Presented.WRONG:
            return Denied(Refusal.WRONG_TOKEN, "wrong bearer token")
        conn.token_generation = self.tokens.generation
        return None

    def browser_check(self, conn: Connection, host: str | None, origin: str | None) -> Denied | None:
        """Refuse DNS-rebinding (foreign Host) and cross-origin requests not allow-listed; the
        daemon's own page (``/ui/``, served by this very listener) is the one origin admitted
        without being listed."""
        if conn.transport != "tcp":
            return None
        if host is not None and host_name(host) not in self.allowed_hosts:
            return self._deny(conn, Denied(Refusal.HOST_NOT_ALLOWED, "host header not allowed"), None)
        if origin is not None and not (self.origin_allowed(origin) or origin == own_origin(host, conn.local_port)):
            return self._deny(conn, Denied(Refusal.ORIGIN_NOT_ALLOWED, "origin not allowed"), None)
        return None

    def origin_allowed(self, origin: str) -> bool:
        return origin in self.allowed_origins

    def _deny(self, conn: Connection, denied: Denied, client_kind: str | None) -> Denied:
        self._audit(conn, "rate_limited" if denied.kind is Refusal.LOCKED_OUT else "denied", denied.message,
                    client_kind)
        return denied

    def _audit(self, conn: Connection, outcome: str, reason: str, client_kind: str | None) -> None:
        self.audit.record(transport=conn.transport, outcome=outcome, peer=conn.peer, key=conn.key,
                          reason=reason, uid=conn.uid, client_kind=client_kind)


def host_name(host_header: str) -> str:
    """The host part of a ``Host`` header, lower-cased, IPv6 brackets kept."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def own_origin(host_header: str | None, local_port: int | None) -> str | None:
    """The origin of a page this listener served, as a request from that page names it, or None.

    It is ``http://`` and the request's own ``Host`` (a browser sends the page's origin and
    the host it connects to alike for a same-origin request), and only when that ``Host``
    names the port the request came in on: a page served by another program on another
    port of the same loopback host is another origin. The ``Host`` name itself was checked
    against the allowed hosts before this is asked."""
    if not host_header or local_port is None:
        return None
    host = host_header.strip().lower()
    name = host_name(host)
    port_text = host[len(name) + 1:] if host.startswith(name + ":") else ""
    if port_text != str(local_port) and not (port_text == "" and local_port == 80):
        return None
    return f"http://{host}"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
