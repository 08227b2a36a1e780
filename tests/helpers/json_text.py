"""JSON text as a hostile client writes it, and the check that a reply is strict JSON.

Owns: writing values Python's ``json`` would not (an infinity as ``1e400``, the only way
JSON text decodes to one; a lone surrogate as its ``\\ud800`` escape; a fragment as given),
and reading a reply as the strictest parsers do (no ``Infinity``, no lone surrogate).
"""

from __future__ import annotations

import json
import math

from cc_daemon.json_values import find_bad_value


class Raw(bytes):
    """JSON text that ``wire`` puts in a message as it is (say, a nesting too deep to build)."""


def wire(value) -> bytes:
    """``value`` as JSON text, with infinities written ``1e400`` (Python would write
    ``Infinity``, which is not JSON) and lone surrogates as ``\\ud800`` escapes."""
    if isinstance(value, Raw):
        return value
    if isinstance(value, float) and math.isinf(value):
        return b"1e400" if value > 0 else b"-1e400"
    if isinstance(value, dict):
        return b"{" + b",".join(wire(key) + b":" + wire(item) for key, item in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(wire(item) for item in value) + b"]"
    return json.dumps(value).encode()


def strict(body: bytes):
    """``body`` decoded, failing unless it is strict JSON any parser takes: no ``Infinity``,
    no lone surrogate (``serde_json`` and I-JSON refuse ``\\ud800``)."""
    def refuse(constant):
        raise AssertionError(f"{constant} in a reply: {body[:300]!r}")

    value = json.loads(body, parse_constant=refuse)
    assert find_bad_value(value) is None, f"a value strict JSON cannot carry in a reply: {body[:300]!r}"
    return value
