"""The base of every refusal a service raises to its caller.

Owns: the shape a refusal carries (``message`` for people, ``data`` for programs), so that
the method layer answers every service's refusals the same way.

Must not: know any error code or anything of the wire: which code a refusal gets is the
method layer's decision (one table per namespace).
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A call a service refuses; ``message`` and ``data`` are what its caller is told."""

    def __init__(self, message: str, **data: Any):
        super().__init__(message)
        self.message = message
        self.data = data
