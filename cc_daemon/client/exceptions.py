"""Everything that can go wrong talking to a daemon, as typed exceptions.

Owns: one exception class per HTTP-level refusal and per JSON-RPC error code the daemon
answers with (each class's ``code`` comes from ``cc_daemon.errors``, the one table of
codes), turning an error object or a refused response into the right class, and a short
reason for a failed connection.

Must not: send anything, or import daemon internals beyond the table of codes.
"""

from __future__ import annotations

from typing import Any, Protocol

from .. import API_VERSION, errors


class Response(Protocol):
    """What the status checks read of a reply: a ``wire.Reply`` or a ``requests.Response``."""

    status_code: int
    headers: Any
    text: str

    def json(self) -> Any: ...


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

    code = errors.PARSE_ERROR


class InvalidRequest(RpcCallError):
    """-32600: the body is JSON but not a valid JSON-RPC request (or an empty batch)."""

    code = errors.INVALID_REQUEST


class MethodNotFound(RpcCallError):
    """-32601: no such method; ``rpc.discover`` lists the ones there are."""

    code = errors.METHOD_NOT_FOUND


class InvalidParams(RpcCallError):
    """-32602: the params do not match the method's schema; ``data["field"]`` says where."""

    code = errors.INVALID_PARAMS


class InternalError(RpcCallError):
    """-32603: the daemon failed; ``data["error_id"]`` finds the traceback in its log."""

    code = errors.INTERNAL_ERROR


class NotOriginator(RpcCallError):
    """-32001 (HTTP 403): no permission request of ours has that id (another client's, or none:
    the daemon answers both alike, so that ids cannot be probed)."""

    code = errors.NOT_ORIGINATOR


class UnknownRequest(RpcCallError):
    """-32002: our permission request is already resolved; ``data["state"]`` says how."""

    code = errors.UNKNOWN_REQUEST


class StorageUnavailable(RpcCallError):
    """-32003: the daemon could not store the call's effect (disk full, corruption); nothing
    was acknowledged, so the call may be retried once ``/readyz`` answers 200 again."""

    code = errors.STORAGE_UNAVAILABLE


class ReplyTooLarge(RpcCallError):
    """-32004: in a batch, this call ran but its result did not fit in the reply's size cap
    (``data`` gives the limit); call it on its own to get the result."""

    code = errors.REPLY_TOO_LARGE


class SessionNotFound(RpcCallError):
    """-32010: no session has that id (it may have been closed before a daemon restart)."""

    code = errors.SESSION_NOT_FOUND


class SessionLimit(RpcCallError):
    """-32011: the daemon already runs its maximum of concurrent sessions (``serve --max-sessions``)."""

    code = errors.SESSION_LIMIT


class RuntimeUnavailable(RpcCallError):
    """-32012: the runtime is unknown or cannot start here (``data`` says why, e.g. not on PATH)."""

    code = errors.RUNTIME_UNAVAILABLE


class TurnQueueFull(RpcCallError):
    """-32013: the session already has its maximum of queued turns; retry after one finishes."""

    code = errors.TURN_QUEUE_FULL


class SessionNotAccepting(RpcCallError):
    """-32014: the session (or the daemon, while it shuts down) takes no new work in its state."""

    code = errors.SESSION_NOT_ACCEPTING


class ApproverRefused(RpcCallError):
    """-32015: ``session.claim_approver`` refused: wrong client kind, no ``approve_via`` delegation,
    or another client already holds the role."""

    code = errors.APPROVER_REFUSED


class BudgetExhausted(RpcCallError):
    """-32016: the session's max_turns, max_cost_usd or max_wall_s is used up (``data.budget``)."""

    code = errors.BUDGET_EXHAUSTED


class NotAGitRepository(RpcCallError):
    """-32017: ``isolation: "worktree"`` asked for a cwd in no git work tree (``data.git`` has git's word)."""

    code = errors.NOT_A_GIT_REPOSITORY


class WorktreeUnavailable(RpcCallError):
    """-32018: no worktree branch can be made: no commit yet, uncommitted changes to tracked files
    (``data.changed``), or git failed (``data.reason`` says which)."""

    code = errors.WORKTREE_UNAVAILABLE


class GitMissing(RpcCallError):
    """-32019: ``isolation: "worktree"`` needs git, and the daemon finds none on its PATH."""

    code = errors.GIT_MISSING


class DelegationRefused(RpcCallError):
    """-32020: ``session.delegate`` refused (``data.reason``): the caller has no standing in the
    session, names no known client or itself, or has nothing to take back."""

    code = errors.DELEGATION_REFUSED


_ERRORS_BY_CODE = {cls.code: cls for cls in (
    ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError, NotOriginator, UnknownRequest,
    StorageUnavailable, ReplyTooLarge, SessionNotFound, SessionLimit, RuntimeUnavailable, TurnQueueFull, SessionNotAccepting,
    BudgetExhausted, ApproverRefused, NotAGitRepository, WorktreeUnavailable, GitMissing,
    DelegationRefused)}


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



def raise_for_http_status(response: Response) -> None:
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
        if isinstance(body, dict) and body.get("error") == "token rotated":
            raise Unauthenticated(status, body, "the daemon's token was rotated (HTTP 401): read the new one "
                                                "from its token file (`cheetahclaws daemon status` names it)")
        raise Unauthenticated(status, body, "the daemon refused our credentials (HTTP 401): "
                                            "wrong or missing token, or another user's socket")
    if status == 426:
        raise VersionMismatch(status, body)
    if status == 429:
        retry = response.headers.get("Retry-After")
        raise RateLimited(status, body, float(retry) if retry else None)
    raise HttpStatusError(status, body)


def _is_rpc_body(response: Response) -> bool:
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

