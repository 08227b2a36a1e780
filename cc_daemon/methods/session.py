"""``session.*``: create sessions, send turns, cancel, close, list, inspect, read history.

Turns are acknowledged at once (``session.send`` returns the turn's ids) and their output
arrives as events (``GET /events?session=<id>``); permission requests a turn raises are
answered with ``permission.answer`` by that turn's originator. Errors: RFC 0004.
"""

from __future__ import annotations

from pathlib import Path

from ..approvals import APPROVE_DENY, INTERACTIVE, UNATTENDED
from ..errors import (APPROVER_REFUSED, BUDGET_EXHAUSTED, DELEGATION_REFUSED, GIT_MISSING, INVALID_PARAMS, NOT_A_GIT_REPOSITORY,
                      RUNTIME_UNAVAILABLE, SESSION_LIMIT, SESSION_NOT_ACCEPTING, SESSION_NOT_FOUND, TURN_QUEUE_FULL,
                      WORKTREE_UNAVAILABLE)
from ..json_values import find_bad_value
from ..rpc import Call, ErrorSpec, Registry, RpcError, object_schema
from ..session import STATES, SessionSpec
from ..session_refusals import (ApproverRefused, BudgetExhausted, DelegationRefused, SessionNotAccepting, SessionRefused,
                                TurnQueueFull)
from ..sessions import SessionLimitReached, SessionNotFound, SessionRuntimeUnavailable
from ..supervisor import RESTART_POLICIES
from ..worktrees import ISOLATIONS, GitMissing, NotAGitRepository, WorktreeUnavailable
from . import MethodContext, translate_refusals

CLIENT_REF = {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "a client's public handle (system.whoami)"}
SESSION_ID = {"type": "string", "minLength": 1, "maxLength": 64, "description": "ses_<16 hex>"}
TURN_ID = {"type": "string", "minLength": 1, "maxLength": 64, "description": "turn_<16 hex>"}
MESSAGE_ID = {"type": "string", "minLength": 1, "maxLength": 128,
              "description": "idempotency key: resending the same id never starts a second turn"}
#: What the kernel cannot take in a path, an argument or an environment variable: a NUL would
#: end it (``Popen`` refuses it with a ValueError, after the session was announced).
NO_NUL = r"^[^\u0000]*$"
#: The reference's session.send names its source with a free-form label ("telegram", "api").
#: Accepted so that its clients work, and ignored: here the source of a turn is its
#: originator, the authenticated caller (``X-Client-Kind`` says what kind of client it is);
#: a label anyone may write can carry no authority over who answers the turn's requests.
ORIGIN = {"type": "string", "maxLength": 200, "description": "accepted for the reference's clients, ignored"}
SESSION = {"type": "object", "required": ["session_id", "state", "runtime", "cwd", "mode", "owner"],
           "properties": {"state": {"enum": list(STATES)}}}
BY_ID = object_schema({"session_id": SESSION_ID}, ("session_id",))

HISTORY_MAX = 1000
NOT_FOUND = ErrorSpec(SESSION_NOT_FOUND, "unknown session")
NOT_ACCEPTING = ErrorSpec(SESSION_NOT_ACCEPTING, "the session (or the daemon) is not accepting work in its state")
#: The code each refusal of the session service is answered with (RFC 0004).
REFUSALS: dict[type[SessionRefused], int] = {
    SessionNotFound: SESSION_NOT_FOUND, SessionLimitReached: SESSION_LIMIT,
    SessionRuntimeUnavailable: RUNTIME_UNAVAILABLE, TurnQueueFull: TURN_QUEUE_FULL,
    SessionNotAccepting: SESSION_NOT_ACCEPTING, ApproverRefused: APPROVER_REFUSED, BudgetExhausted: BUDGET_EXHAUSTED,
    NotAGitRepository: NOT_A_GIT_REPOSITORY, WorktreeUnavailable: WORKTREE_UNAVAILABLE, GitMissing: GIT_MISSING,
    DelegationRefused: DELEGATION_REFUSED}


def register(registry: Registry, context: MethodContext) -> None:
    sessions = context.sessions
    if sessions is None:
        return  # a daemon composed without sessions serves no session methods
    translate_refusals(registry, REFUSALS)

    @registry.method(
        "session.create",
        summary="Start a session: a supervised runtime process in cwd. Returns at once, in state starting.",
        params=object_schema({
            "runtime": {"type": "string", "minLength": 1, "maxLength": 64,
                        "description": "demo, command, claude, codex, custom (args: a program speaking RFC 0004), or a runtime from an entry point"},
            "cwd": {"type": "string", "minLength": 1, "maxLength": 4095, "pattern": NO_NUL,
                    "description": "absolute directory (PATH_MAX: 4,096 bytes with the NUL)"},
            "name": {"type": "string", "maxLength": 200},
            "mode": {"enum": [INTERACTIVE, UNATTENDED], "default": INTERACTIVE},
            "approve_via": {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,32}$",
                            "description": "unattended only: deny (default), allow, or a client kind"},
            "env": {"type": "object", "maxProperties": 200,
                    "additionalProperties": {"type": "string", "pattern": NO_NUL},
                    "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}},
            "args": {"type": "array", "maxItems": 256,
                     "items": {"type": "string", "maxLength": 65536, "pattern": NO_NUL}},
            "restart": {"enum": list(RESTART_POLICIES), "default": "on-crash"},
            "max_turn_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
            "max_turns": {"type": "integer", "minimum": 1, "maximum": 1000000,
                          "description": "budget: turns the session may start"},
            "max_cost_usd": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000000,
                             "description": "budget: the cost its runtime reports, summed"},
            "max_wall_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 31536000,
                           "description": "budget: seconds its turns run, summed"},
            "isolation": {"enum": list(ISOLATIONS), "default": "none",
                          "description": "worktree: run in a git worktree and branch of its own, made from the "
                                         "repository holding cwd"},
        }, ("runtime", "cwd")),
        result=SESSION,
        errors=(ErrorSpec(SESSION_LIMIT, "too many sessions running"),
                ErrorSpec(RUNTIME_UNAVAILABLE, "unknown runtime, or it cannot run (e.g. claude not on PATH)"),
                NOT_ACCEPTING, ErrorSpec(NOT_A_GIT_REPOSITORY, "isolation worktree: cwd is in no git work tree"),
                ErrorSpec(WORKTREE_UNAVAILABLE, "isolation worktree: no commit to branch from, uncommitted "
                                                "changes to tracked files, or git failed"),
                ErrorSpec(GIT_MISSING, "isolation worktree: git is not on the daemon's PATH")))
    def create(call: Call) -> dict:
        params = call.params
        mode = params.get("mode", INTERACTIVE)
        if "approve_via" in params and mode != UNATTENDED:
            raise RpcError(INVALID_PARAMS, "Invalid params: approve_via: applies to unattended sessions only",
                           {"field": "approve_via", "reason": "mode is not unattended"})
        spec = SessionSpec(
            runtime=params["runtime"], cwd=directory(params["cwd"]), name=params.get("name"), mode=mode,
            approve_via=params.get("approve_via", APPROVE_DENY), env=dict(params.get("env", {})),
            args=tuple(params.get("args", ())), restart=params.get("restart", "on-crash"),
            max_turn_s=params.get("max_turn_s"), max_turns=params.get("max_turns"),
            max_cost_usd=params.get("max_cost_usd"), max_wall_s=params.get("max_wall_s"))
        context.clients.confirm(call.caller)
        return sessions.create(call.caller, spec, isolation=params.get("isolation", "none")).snapshot(detail=True)

    @registry.method(
        "session.send",
        summary="Queue a turn; answers at once with its ids, output follows as events.",
        params=object_schema({"session_id": SESSION_ID, "text": {"type": "string", "minLength": 1, "maxLength": 200000},
                              "message_id": MESSAGE_ID, "origin": ORIGIN}, ("session_id", "text")),
        result=object_schema({"session_id": SESSION_ID, "turn_id": TURN_ID, "message_id": MESSAGE_ID},
                             ("session_id", "turn_id", "message_id")),
        errors=(NOT_FOUND, NOT_ACCEPTING, ErrorSpec(TURN_QUEUE_FULL, "too many turns queued"),
                ErrorSpec(BUDGET_EXHAUSTED, "a budget given at create is used up")))
    def send(call: Call) -> dict:
        session = sessions.get(call.params["session_id"])
        context.clients.confirm(call.caller)  # the originator must be able to resume its id
        turn = session.send(call.caller, call.params["text"], call.params.get("message_id"))
        return {"session_id": session.session_id, "turn_id": turn.turn_id, "message_id": turn.message_id}

    @registry.method(
        "session.cancel",
        summary="Cancel the running turn (or the queued turn turn_id). The runtime is killed if it ignores it.",
        params=object_schema({"session_id": SESSION_ID, "turn_id": TURN_ID}, ("session_id",)),
        result=object_schema({"session_id": SESSION_ID, "cancelled": {"type": "boolean"},
                              "turn_id": {"type": ["string", "null"]}}, ("session_id", "cancelled", "turn_id")),
        errors=(NOT_FOUND,))
    def cancel(call: Call) -> dict:
        session = sessions.get(call.params["session_id"])
        turn = session.cancel(call.caller, call.params.get("turn_id"))
        return {"session_id": session.session_id, "cancelled": turn is not None,
                "turn_id": turn.turn_id if turn is not None else None}

    @registry.method(
        "session.close",
        summary="Stop the runtime (stop message, SIGTERM after 2 s, SIGKILL by 5 s) and end the session; "
                "a worktree session's worktree is removed (kept if it holds changes, unless discard_changes), "
                "its branch kept (unless delete_branch).",
        params=object_schema({"session_id": SESSION_ID, "delete_branch": {"type": "boolean", "default": False},
                              "discard_changes": {"type": "boolean", "default": False}}, ("session_id",)),
        result=SESSION, errors=(NOT_FOUND,))
    def close(call: Call) -> dict:
        session = sessions.get(call.params["session_id"])
        released = sessions.close(session, call.caller, delete_branch=call.params.get("delete_branch", False),
                                  discard_changes=call.params.get("discard_changes", False))
        return {**session.snapshot(detail=True), **({"worktree_released": released} if released else {})}

    @registry.method(
        "session.restart",
        summary="Start a parked session's runtime again, with fresh restart backoff; why it was parked stays "
                "in its history.",
        params=BY_ID, result=SESSION, errors=(NOT_FOUND,))
    def restart(call: Call) -> dict:
        session = sessions.get(call.params["session_id"])
        session.restart(call.caller)
        return session.snapshot(detail=True)

    @registry.method(
        "session.list", summary="Every session the daemon knows (ended ones for a while), newest first.",
        result=object_schema({"sessions": {"type": "array", "items": SESSION}}, ("sessions",)))
    def list_sessions(call: Call) -> dict:
        return {"sessions": [session.snapshot() for session in sessions.list()]}

    @registry.method(
        "session.get", summary="One session in detail: turns, runner (pid, restarts, last exit), stderr tail.",
        params=BY_ID, result=SESSION, errors=(NOT_FOUND,))
    def get(call: Call) -> dict:
        return sessions.get(call.params["session_id"]).snapshot(detail=True)

    @registry.method(
        "session.history",
        summary=("The session's events from the durable log, oldest first, after since. A page may hold fewer "
                 "than limit events and still have a next_since: keep paging until it is null."),
        params=object_schema({"session_id": SESSION_ID,
                              "since": {"type": "integer", "minimum": 0, "default": 0,
                                        "description": "only events with a larger id"},
                              "limit": {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX, "default": 500}},
                             ("session_id",)),
        result=object_schema({"session_id": SESSION_ID, "events": {"type": "array", "items": {"type": "object"}},
                              "next_since": {"type": ["integer", "null"],
                                             "description": "pass as since for the next page; null: no more"}},
                             ("session_id", "events", "next_since")))
    def history(call: Call) -> dict:
        params = call.params
        # Works for ended and forgotten sessions too: the log outlives the session objects.
        page = context.event_log.query(after_id=params.get("since", 0), session_id=params["session_id"],
                                       limit=params.get("limit", 500))
        return {"session_id": params["session_id"], "events": [event.as_dict(call.caller) for event in page.events],
                "next_since": page.cursor}

    @registry.method(
        "session.runtimes", summary="The runtimes this daemon can run, with availability, version and path.",
        result=object_schema({"runtimes": {"type": "array", "items": {
            "type": "object", "required": ["name", "available", "version", "path", "problem", "source"]}}},
            ("runtimes",)))
    def runtimes(call: Call) -> dict:
        return {"runtimes": [info.as_dict() for info in sessions.runtimes.describe()]}

    @registry.method(
        "session.claim_approver",
        summary="Become the approver of an unattended session whose approve_via names the caller's client kind.",
        params=BY_ID,
        result=object_schema({"session_id": SESSION_ID, "approver": {"type": "object"}}, ("session_id", "approver")),
        errors=(NOT_FOUND, ErrorSpec(APPROVER_REFUSED, "wrong client kind, no delegation, or already claimed")))
    def claim_approver(call: Call) -> dict:
        session = sessions.get(call.params["session_id"])
        context.clients.confirm(call.caller)
        approver = session.claim_approver(call.caller, explicit=True)
        return {"session_id": session.session_id, "approver": approver.public()}

    @registry.method(
        "session.delegate",
        summary="Let one other client (named by its client_ref) answer the permission requests you originate in "
                "this session, or take that back (to: null). For the session's owner, its approver, or the "
                "originator of its running or a queued turn.",
        params=object_schema({"session_id": SESSION_ID, "to": {**CLIENT_REF, "type": ["string", "null"]}},
                             ("session_id", "to")),
        result=object_schema({"session_id": SESSION_ID, "delegator": {"type": "object"},
                              "delegate": {"type": ["object", "null"]}, "previous": {"type": ["object", "null"]},
                              "pending": {"type": "array", "items": {"type": "string"}}},
                             ("session_id", "delegator", "delegate", "previous", "pending")),
        errors=(NOT_FOUND, ErrorSpec(DELEGATION_REFUSED, "no standing in the session, an unknown client_ref, "
                                                         "the caller itself, or nothing to take back")))
    def delegate(call: Call) -> dict:
        session = sessions.get(call.params["session_id"])
        to = call.params["to"]
        delegate = context.clients.find_by_ref(to) if to is not None else None
        if to is not None and delegate is None:
            raise RpcError(DELEGATION_REFUSED, f"No client known to this daemon has client_ref {to} (a client is "
                           "known once it has called with its X-Client-Id)",
                           {"session_id": session.session_id, "reason": "unknown_client", "to": to})
        context.clients.confirm(call.caller)  # the delegator must be able to come back to take it back
        return {"session_id": session.session_id, **session.delegate(call.caller, delegate)}


def directory(text: str) -> Path:
    """``cwd`` as an absolute, existing directory (symlinks resolved), or invalid params."""
    path = Path(text)
    if not path.is_absolute():
        raise invalid_cwd("must be an absolute path", "not absolute")
    try:
        resolved = path.resolve()
        is_dir = resolved.is_dir()
    except OSError as exc:  # a name longer than the kernel takes (in bytes, not characters), no access
        raise invalid_cwd(f"{text}: {exc.strerror}", exc.strerror or "unusable") from None
    except RuntimeError:  # how Python before 3.13 reports a symlink loop
        raise invalid_cwd(f"{text}: a symlink loop", "a symlink loop") from None
    if not is_dir:
        raise invalid_cwd(f"{text} is not a directory", "not a directory")
    # A name that is not UTF-8 decodes to lone surrogates: the runtime's init message (JSON in
    # UTF-8) could not carry it, and every event naming the session's cwd would hold them.
    if find_bad_value(str(resolved)) is not None:
        raise invalid_cwd(f"{text} resolves to a path that is not valid UTF-8", "not UTF-8")
    return resolved


def invalid_cwd(problem: str, reason: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: cwd: {problem}", {"field": "cwd", "reason": reason})
