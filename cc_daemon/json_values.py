"""Values a client sent that the daemon cannot carry on: found before anything uses them.

Owns: the check that a decoded JSON value can travel everywhere the daemon sends what it
received (an event frame, a runtime's stdin, a log line, a reply): every string encodable
as UTF-8 (JSON's ``\\ud800`` decodes to a lone surrogate, which cannot be), every number
finite (``1e400`` decodes to ``inf``, which strict JSON cannot write), and nesting no deeper
than ``MAX_DEPTH`` (so that validating or copying it never meets Python's recursion limit).
It names the first offending field the way params errors do (``env.PATH``, ``args.2``).

Must not: know about JSON-RPC, HTTP, the runtime protocol or any method: the RPC layer turns
a ``BadValue`` into -32602 (or -32600 for an ``id`` or a ``method``) before any handler runs,
so no state changes and no event is published for a request that carries one; the runtime
protocol turns it into a ``bad_value`` protocol error, so no event is built from one either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

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

    Iterative, so that a hostile depth costs a list, not the interpreter's stack. The walk
    keeps one iterator per open container and the names leading to it, so that a wide value
    (a 1 MiB body holds 350,000 elements) costs no name per element: only the value found
    has its path spelled out."""
    reason = _scalar_problem(value)
    if reason is not None or not isinstance(value, (dict, list)):
        return None if reason is None else BadValue(field or "(params)", reason)
    names = [field] if field else []  # from the root to the container being walked
    open_containers = [_members(value)]
    while open_containers:
        for key, child in open_containers[-1]:
            if isinstance(key, str) and not _encodable(key):
                return BadValue(_spell(names), "has a key with a lone surrogate, which is not valid Unicode")
            if isinstance(child, (dict, list)):
                if len(open_containers) >= MAX_DEPTH:
                    return BadValue(_spell([*names, str(key)]), f"is nested deeper than {MAX_DEPTH} levels")
                names.append(str(key))
                open_containers.append(_members(child))
                break
            reason = _scalar_problem(child)
            if reason is not None:
                return BadValue(_spell([*names, str(key)]), reason)
        else:  # this container is done: back to its parent
            open_containers.pop()
            if open_containers:
                names.pop()
    return None


def _members(container: dict | list) -> Iterator[tuple[Any, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _spell(names: list[str]) -> str:
    return ".".join(names) or "(params)"


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None if _encodable(value) else "contains a lone surrogate, which is not valid Unicode"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
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
