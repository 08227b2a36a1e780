"""The reference daemon's methods that cc_daemon does not serve, and why.

Owns: the one list of them (whole namespaces and single methods) and the ``data`` that a
-32601 for one of them carries, so that a client written for the reference learns that
the method is left out on purpose, why, and what to use instead. RFC 0001 §10 gives the
same list.

Must not: serve any of them, or register anything: the dispatcher asks ``why_not_served``
only for a name no method has.
"""

from __future__ import annotations

#: Name (``ns.*`` for a namespace) -> why cc_daemon does not serve it.
NOT_SERVED: dict[str, str] = {
    "agent.*": "the reference runs its own agent loop inside the daemon; cc_daemon supervises agent runtimes "
               "as sessions: use session.create, session.send, session.list and session.close",
    "bridge.*": "the reference hosts chat bridges inside the daemon; cc_daemon hosts none: a bridge is a client "
                "of its own (its own X-Client-Kind) that drives sessions with session.* and reads /events",
    "monitor.*": "the reference's scheduled topic monitors are an application feature, outside a control plane "
                 "for agent sessions",
    "proactive.*": "the reference's proactive watcher is an application feature; a client can send turns on a "
                   "timer of its own with session.send",
    "kernel.*": "the reference's opt-in agent kernel is not part of cc_daemon; its event log is read with "
                "events.query and GET /events",
    "session.reply": "the reference publishes a bridge's outbound message; in cc_daemon a session's output comes "
                     "from its runtime, as text_chunk and turn_done events",
    "session.list_recent": "the reference lists recently seen session ids and origins; use session.list",
}


def why_not_served(method: str) -> dict[str, str]:
    """``{"not_served", "reason"}`` when ``method`` is one of the reference's left out here, else ``{}``."""
    for name, reason in NOT_SERVED.items():
        if method == name or (name.endswith(".*") and method.startswith(name[:-1])):
            return {"not_served": name, "reason": f"cc_daemon does not serve the reference's {name}: {reason}"}
    return {}
