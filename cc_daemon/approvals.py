"""Who answers a session's permission requests, and how each answer gets back to its runtime.

Owns: the session modes and the ``approve_via`` policies; the identity a policy answers as
(``PolicyIdentity``); and, per session (``Approvals``), the routing of each request its
runtime makes (interactive: the turn's originator is asked; unattended: the client that
claimed approval for the delegated kind, else the session's policy answers at once, as
itself, on the record) with the links from the store's requests back to the runtime's
request ids, so that each resolution (answered, timed out, cancelled) becomes exactly one
``permission_response`` to the runtime.

Must not: lock (every call is made with its session's lock held), change a session's state,
decide who may claim approval (the session does), or publish: the permission store
announces requests and their answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .events import Originator
from .permissions import PermissionRequest, PermissionStore
from .runtimes.protocol import encode

log = logging.getLogger("cc_daemon.sessions")

INTERACTIVE, UNATTENDED = "interactive", "unattended"
#: ``approve_via`` values that are policies; any other value names a client kind.
APPROVE_DENY, APPROVE_ALLOW = "deny", "allow"


def delegates_to_kind(mode: str, approve_via: str) -> bool:
    """Whether an unattended session's ``approve_via`` names a client kind, not a policy."""
    return mode == UNATTENDED and approve_via not in (APPROVE_DENY, APPROVE_ALLOW)


@dataclass(frozen=True)
class PolicyIdentity:
    """Who an unattended session's policy answers as: a random key that no client can hold
    (client keys are keyed hashes of client ids), so nobody else can answer in its name."""

    client_key: str

    @property
    def originator(self) -> Originator:
        return Originator(self.client_key, "policy", "daemon")


class Approvals:
    """One session's permission requests in flight."""

    def __init__(self, session_id: str, mode: str, approve_via: str, store: PermissionStore,
                 policy: PolicyIdentity):
        self.session_id = session_id
        self.mode = mode
        self.approve_via = approve_via
        self._store = store
        self._policy = policy
        #: Pending requests: the store's request id -> (the runtime's request id, the turn id).
        self._links: dict[str, tuple[str, str]] = {}

    def pending(self) -> list[str]:
        """The store's ids of the requests still waiting for their resolution."""
        return sorted(self._links)

    def is_pending(self, runtime_request_id: str) -> bool:
        return any(link[0] == runtime_request_id for link in self._links.values())

    def ask(self, message: dict, turn_id: str, originator: Originator, approver: Originator | None) -> bool:
        """Put the runtime's ``permission_request`` to whoever answers it; True when the
        session now waits for that answer, False when its policy answered at once."""
        asker = originator if self.mode == INTERACTIVE else approver
        tool, tool_input = message["tool"], message["input"]
        request = self._store.create(asker or self._policy.originator, tool, tool_input, message.get("rationale"),
                                     mode=self.mode, session_id=self.session_id, turn_id=turn_id)
        self._links[request.request_id] = (message["request_id"], turn_id)
        if asker is not None:
            return True
        # Unattended and nobody to ask: the policy answers, as itself, on the record.
        approve = self.approve_via == APPROVE_ALLOW
        reason = (f"approve_via={self.approve_via}" if not delegates_to_kind(self.mode, self.approve_via)
                  else f"no client of kind {self.approve_via!r} has claimed approval for this session")
        if approve:
            log.warning("session %s: AUTO-APPROVED %s %s (approve_via=allow)", self.session_id, tool,
                        str(tool_input)[:200])
        self._store.answer(request.request_id, self._policy, {"approve": approve, "reason": reason})
        return False

    def response(self, request: PermissionRequest) -> bytes | None:
        """The ``permission_response`` telling the runtime how ``request`` ended; None when it
        is not one of this session's pending requests (never answered twice)."""
        link = self._links.pop(request.request_id, None)
        if link is None:
            return None
        runtime_request_id, turn_id = link
        answer = request.answer or {}
        return encode({"type": "permission_response", "turn_id": turn_id, "request_id": runtime_request_id,
                       "approve": answer.get("approve") is True, "reason": str(answer.get("reason") or request.state)})

    def withdraw(self, runtime_request_id: str, reason: str) -> bool:
        """The runtime gave its question up: cancel the request, and send it no answer (the
        link goes first). False when no such request is pending."""
        for store_id, (runtime_id, _) in list(self._links.items()):
            if runtime_id == runtime_request_id:
                del self._links[store_id]
                self._store.cancel(store_id, reason)
                return True
        return False

    def cancel(self, reason: str) -> None:
        """Deny the pending requests (their turn ended); the runtime is told through ``response``."""
        if self._links:
            self._store.cancel_for_session(self.session_id, reason)

    def abandon(self, reason: str) -> None:
        """Deny the pending requests of a runtime that is gone: the links go first, so that no
        denial is sent to the dead process (or to the next one)."""
        if self._links:
            self._links.clear()
            self._store.cancel_for_session(self.session_id, reason)
