"""Values a client sent that the daemon cannot carry on: found before anything uses them.

Owns: the check that a decoded JSON value can travel everywhere the daemon sends what it
received (an event frame, a runtime's stdin, a log line, a reply): every string encodable
as UTF-8 (JSON's ``\\ud800`` decodes to a lone surrogate, which cannot be), every number
finite (``1e400`` decodes to ``inf``, which strict JSON cannot write), and nesting no deeper
than ``MAX_DEPTH`` (so that validating or copying it never meets Python's recursion limit).
It names the first offending field the way params errors do (``env.PATH``, ``args.2``).

Must not: know about JSON-RPC, HTTP or any method: the RPC layer turns a ``BadValue`` into
-32602 (or -32600 for an ``id``) before any handler runs, so no state changes and no event
is published for a request that carries one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Deeper than any params schema we publish needs, and far below Python's recursion limit
#: (~1,000), which jsonschema's error reporting reached at a nesting of ~980 (issue 12).
MAX_DEPTH = 32


@dataclass(frozen=True)
class BadValue:
    """Where the first value that cannot be carried is, and why."""

    field: str
    reason: str


def find_bad_value(value: Any, field: str = "") -> BadValue | None:
    """The first string, number or nesting in ``value`` the daemon cannot carry, or None.

    Iterative, so that a hostile depth costs a list, not the interpreter's stack."""
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return BadValue(path or "(params)", "contains a lone surrogate, which is not valid Unicode")
        elif isinstance(item, float):
            if not math.isfinite(item):
                return BadValue(path or "(params)", "is not a finite number")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                return BadValue(path or "(params)", f"is nested deeper than {MAX_DEPTH} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                name = str(key)
                if isinstance(key, str) and not _encodable(key):
                    return BadValue(path or "(params)", "has a key with a lone surrogate, which is not valid Unicode")
                stack.append((child, f"{path}.{name}" if path else name, depth + 1))
    return None


def _encodable(text: str) -> bool:
    # Most strings are ASCII, and str.isascii() is a flag check: the encode runs only for the rest.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
