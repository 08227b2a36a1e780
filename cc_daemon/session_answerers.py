"""Who answers a session's permission requests besides the turn's originator.

Owns: the *approver* of an unattended session whose ``approve_via`` names a client kind
(``claim_approver``: the first client of that kind to claim it), and *delegations*
(``delegate``): the session's owner, its approver, or the originator of its running or a
queued turn hands the right to answer the permission requests it originates in this
session to one other client, named by its public ``client_ref``, and takes it back. Each
delegator has at most one delegate; a new one replaces the last. Both are announced as
events (``approver_claimed``, ``permission_delegated``, ``permission_delegation_revoked``),
kept in the session's record so that they survive a daemon restart, and told to the
permission store, which enforces who may answer. ``Answerers`` is a part of
``session.Session`` (its only user), kept apart so that each file stays readable.

Must not: be used without ``Session``; resolve a ``client_ref`` (the client registry does,
through the method layer); answer a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .events import Originator
from .identity import Caller
from .session_records import originator_from, originator_record
from .session_refusals import ApproverRefused, DelegationRefused

if TYPE_CHECKING:
    from .session import Session


class Answerers:
    """The approver and the delegations of a ``Session``."""

    def claim_approver(self: Session, caller: Caller, *, explicit: bool) -> Originator | None:
        """Make ``caller`` the approver of an unattended session whose ``approve_via`` names
        its kind, if no other client holds that role. ``explicit`` (``session.claim_approver``)
        turns a refusal into an error; implicit claims (create, send) fail silently."""
        def refuse(message: str, **data: Any) -> None:
            if explicit:
                raise ApproverRefused(message, session_id=self.session_id, **data)

        with self._lock:
            if not self.spec.delegates_to_kind:
                return refuse("This session does not delegate approval to a client kind",
                              mode=self.spec.mode, approve_via=self.spec.approve_via)
            if caller.kind != self.spec.approve_via:
                return refuse(f"Only a client of kind {self.spec.approve_via!r} may approve for this session",
                              expected_kind=self.spec.approve_via, kind=caller.kind)
            if self.approver is not None:
                if self.approver.is_held_by(caller):
                    return self.approver
                return refuse("Another client already approves for this session",
                              approver=self.approver.client_ref)
            self.approver = caller.originator()
            self._publish("approver_claimed", {"approver": self.approver.public()}, self.approver)
            return self.approver

    def delegate(self: Session, caller: Caller, delegate: Originator | None) -> dict[str, Any]:
        """Let ``delegate`` answer ``caller``'s permission requests in this session (None:
        take that back). Returns the delegation as announced."""
        def refuse(message: str, reason: str) -> DelegationRefused:
            return DelegationRefused(message, session_id=self.session_id, reason=reason)

        with self._lock:
            delegator = caller.originator()
            previous = self._delegations.get(delegator.client_key)
            if delegate is None and previous is None:
                raise refuse("You have delegated nothing in this session to take back", "not_delegated")
            if delegate is not None and not self._may_delegate(caller):
                raise refuse("Only the session's owner, its approver, or the originator of its running or a "
                             "queued turn may delegate answering its permission requests", "no_standing")
            if delegate is not None and delegate.client_key == delegator.client_key:
                raise refuse("A client cannot delegate to itself", "self")
            pending = self.services.permissions.pending_of(self.session_id, delegator.client_key)
            data = {"delegator": delegator.public(), "delegate": delegate.public() if delegate else None,
                    "previous": previous.public() if previous else None, "pending": pending}
            # Announced first: a delegation the log cannot hold is refused (-32003), never half made.
            self._publish("permission_delegated" if delegate else "permission_delegation_revoked", data,
                          delegator, acknowledged=True)
            if delegate is None:
                del self._delegations[delegator.client_key], self._delegators[delegator.client_key]
            else:
                self._delegations[delegator.client_key] = delegate
                self._delegators[delegator.client_key] = delegator
            self.services.permissions.set_delegate(self.session_id, delegator.client_key, delegate)
            self._persist()
            return data

    def _may_delegate(self: Session, caller: Caller) -> bool:
        holders = [self.owner, self.approver, *(turn.originator for turn in self._queue)]
        if self._current is not None:
            holders.append(self._current.originator)
        return any(holder is not None and holder.is_held_by(caller) for holder in holders)

    def _delegations_record(self: Session) -> list[dict[str, Any]]:
        return [{"delegator": originator_record(self._delegators[key]), "delegate": originator_record(delegate)}
                for key, delegate in self._delegations.items()]

    def _delegations_public(self: Session) -> list[dict[str, Any]]:
        return [{"delegator": self._delegators[key].public(), "delegate": delegate.public()}
                for key, delegate in self._delegations.items()]

    def _restore_delegations(self: Session, records: list[dict[str, Any]]) -> None:
        for record in records:
            delegator, delegate = originator_from(record["delegator"]), originator_from(record["delegate"])
            self._delegators[delegator.client_key] = delegator
            self._delegations[delegator.client_key] = delegate
            self.services.permissions.set_delegate(self.session_id, delegator.client_key, delegate)
