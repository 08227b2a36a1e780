"""A session's states and the one table of the moves between them (RFC 0004 §9).

Owns: the state names, ``TRANSITIONS`` (checked by ``Session._set_state``, the only place a
state changes), which states are live (hold a slot of ``--max-sessions``) and which ended.

Must not: hold any behaviour: the session decides when to move, this says where it may.
"""

from __future__ import annotations

from .supervisor import FAILED, PARKED, RESTARTING, STOPPED
from .transitions import Transitions

# -- states ---------------------------------------------------------------------------------
# RESTARTING, PARKED, STOPPED and FAILED are the supervisor's: after an exit a session is in
# its supervisor's state, which the ``Decision`` names (the one decision -> state mapping).
STARTING, IDLE, BUSY, WAITING_PERMISSION = "starting", "idle", "busy", "waiting_permission"
#: Brought back after a daemon restart, its runtime starting (with its resume token, if any).
RESUMING = "resuming"
#: Where a runtime's exit leaves a session (one state per ``Decision``); ``close`` also stops.
AFTER_EXIT = frozenset({RESTARTING, PARKED, STOPPED, FAILED})
TRANSITIONS = Transitions("session", {
    STARTING: {IDLE, *AFTER_EXIT},
    RESUMING: {IDLE, *AFTER_EXIT},
    IDLE: {BUSY, *AFTER_EXIT},
    BUSY: {IDLE, WAITING_PERMISSION, *AFTER_EXIT},
    # Staying: a second request while one is pending. To idle: the runtime ended the turn while
    # an answer was on its way (cancelling the turn's requests found none left to cancel).
    WAITING_PERMISSION: {BUSY, IDLE, WAITING_PERMISSION, *AFTER_EXIT},
    # Staying: the respawn failed and is retried. Never failed: policy none never restarts.
    RESTARTING: {STARTING, RESTARTING, PARKED, STOPPED},
    PARKED: {STOPPED, STARTING},  # session.restart
    # Staying: closing a session whose runtime had exited with 0 (or whose stop was reported).
    STOPPED: {STOPPED},
    FAILED: {STOPPED},
})
STATES = TRANSITIONS.states
#: States that hold a slot of the concurrent-session limit (a process runs or will run).
LIVE_STATES = frozenset({STARTING, RESUMING, IDLE, BUSY, WAITING_PERMISSION, RESTARTING})
ENDED_STATES = frozenset({PARKED, STOPPED, FAILED})
