"""Every error code the daemon answers with, defined once.

Owns: the JSON-RPC error codes (the standard ones of JSON-RPC 2.0, the domain ones of
RFC 0001 and our own from RFC 0004), and the one code that is
answered with a non-200 HTTP status. The RPC layer, the method layer and the client
library all take their codes from here; a test ties the client's exception classes to
this table.

Must not: import anything of the daemon, or decide when an error happens: services raise
domain exceptions, and the method layer maps them to these codes.
"""

from __future__ import annotations

# -- JSON-RPC 2.0 (section 5.1 of the specification) -------------------------------------
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# -- RFC 0001 domain errors (ours continue downwards from -32003; see docs/RFC) ----------
NOT_ORIGINATOR = -32001
UNKNOWN_REQUEST = -32002
#: The durable store refused a write (disk full, corruption): nothing was acknowledged.
STORAGE_UNAVAILABLE = -32003
#: The call ran, but its response does not fit in what is left of the reply's byte cap.
REPLY_TOO_LARGE = -32004

# -- RFC 0004 session errors (-32005..-32009 are reserved for the core) -------------------
SESSION_NOT_FOUND = -32010
SESSION_LIMIT = -32011
RUNTIME_UNAVAILABLE = -32012
TURN_QUEUE_FULL = -32013
SESSION_NOT_ACCEPTING = -32014
APPROVER_REFUSED = -32015
#: A limit given at session.create (max_turns, max_cost_usd, max_wall_s) is used up.
BUDGET_EXHAUSTED = -32016
#: session.create with isolation "worktree": the cwd is in no git work tree.
NOT_A_GIT_REPOSITORY = -32017
#: session.create with isolation "worktree": no branch can be made (no commit, uncommitted changes, git failed).
WORKTREE_UNAVAILABLE = -32018
#: session.create with isolation "worktree": git is not on the daemon's PATH.
GIT_MISSING = -32019
#: session.delegate refused: no standing in the session, an unknown client_ref, itself, or nothing to take back.
DELEGATION_REFUSED = -32020

#: Every code above by its name, for documentation and for the client's consistency test.
CODES: dict[str, int] = {name: value for name, value in globals().items()
                         if name.isupper() and isinstance(value, int)}

#: The one domain error answered with a non-200 status (contract §3).
HTTP_STATUS_FOR_CODE = {NOT_ORIGINATOR: 403}
