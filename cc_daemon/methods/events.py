"""``events.query``: page through the durable event log, for frontends that render timelines.

Each event is rendered for the caller (``Event.as_dict``): the originator's own client id
appears only in the originator's copy, as on the live stream.
"""

from __future__ import annotations

from ..rpc import Call, Registry, object_schema
from . import MethodContext

EVENT_ID = {"type": "integer", "minimum": 0}
#: Bounded by what SQLite compares with: a larger integer overflows its binding (-32603 once).
TIMESTAMP = {"type": "number", "minimum": -(2**63), "maximum": 2**63 - 1, "description": "seconds since the epoch"}
MAX_LIMIT = 1000

QUERY_PARAMS = object_schema({
    "after_id": {**EVENT_ID, "default": 0, "description": "only ids greater than this"},
    "before_id": {**EVENT_ID, "description": "only ids smaller than this"},
    "types": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200},
              "minItems": 1, "maxItems": 64, "description": "only these event types"},
    "session_id": {"type": "string", "minLength": 1, "maxLength": 200, "description": "only this session's events"},
    "since_ts": {**TIMESTAMP, "description": "only events at or after this time"},
    "until_ts": {**TIMESTAMP, "description": "only events before this time"},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
    "order": {"enum": ["asc", "desc"], "default": "asc",
              "description": "asc pages forward with after_id, desc pages back with before_id"},
})

QUERY_RESULT = object_schema({
    "events": {"type": "array", "items": {"type": "object", "required": ["id", "ts", "type", "data"]}},
    "cursor": {"type": ["integer", "null"],
               "description": "pass as after_id (asc) or before_id (desc) for the next page; null: no more"},
    "oldest_id": {**EVENT_ID, "description": "the oldest id still retained"},
    "last_id": {**EVENT_ID, "description": "the newest stored id"},
}, ("events", "cursor", "oldest_id", "last_id"))


def register(registry: Registry, context: MethodContext) -> None:
    event_log = context.event_log

    @registry.method(
        "events.query",
        summary=("Stored events by id range, types, session and time, oldest first (or newest first with "
                 "order=desc). A page may hold fewer than limit events and still carry a cursor: one call scans "
                 "a bounded id range, so keep paging until the cursor is null."),
        params=QUERY_PARAMS, result=QUERY_RESULT, positional=())
    def query(call: Call) -> dict:
        params = call.params
        descending = params.get("order", "asc") == "desc"
        page = event_log.query(after_id=params.get("after_id", 0), before_id=params.get("before_id"),
                               types=params.get("types", ()), session_id=params.get("session_id"),
                               since_ts=params.get("since_ts"), until_ts=params.get("until_ts"),
                               limit=params.get("limit", 100), descending=descending)
        return {"events": [event.as_dict(call.caller) for event in page.events], "cursor": page.cursor,
                "oldest_id": event_log.oldest_id(), "last_id": event_log.last_id()}
