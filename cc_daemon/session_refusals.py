"""The refusals a session's callers get, as domain exceptions.

Owns: ``SessionRefused`` and its subclasses raised by one session (``session.Session`` and
its parts: ``session_answerers``); ``sessions`` adds the manager's own. The method layer
(``methods/session.py``) gives each its error code.

Must not: decide when to refuse, or know error codes.
"""

from __future__ import annotations

from .refused import Refused


class SessionRefused(Refused):
    """A call the session service refuses (the method layer gives each subclass its code)."""


class SessionNotAccepting(SessionRefused):
    """The session (or the daemon) takes no more work in its state."""


class TurnQueueFull(SessionRefused):
    """The session already has ``max_queued_turns`` turns queued."""


class BudgetExhausted(SessionRefused):
    """One of the session's limits (max_turns, max_cost_usd, max_wall_s) is used up."""


class ApproverRefused(SessionRefused):
    """An explicit claim to approve for a session that the session does not grant."""


class DelegationRefused(SessionRefused):
    """A delegation the caller may not make or take back (``data.reason`` says why)."""
