"""What a client may send that the daemon cannot carry on (issue 12, findings 5 and 8)."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from cc_daemon.json_values import MAX_DEPTH, BadValue, find_bad_value

# Everything json.loads can produce from strict JSON text of bounded depth.
finite_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), children, max_size=4),
    max_leaves=30)


@given(finite_json)
def test_anything_strict_json_can_carry_passes(value):
    if find_bad_value(value) is None:
        json.dumps(value, allow_nan=False).encode("utf-8")  # and it really can be written out
    else:
        assert depth(value) > MAX_DEPTH


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@given(finite_json, st.sampled_from(["\ud800", "a\udfffb", math.inf, -math.inf, math.nan]))
def test_a_bad_leaf_anywhere_is_found_and_named(value, bad):
    container = {"outer": [value, {"inner": bad}]}
    found = find_bad_value(container)
    assert isinstance(found, BadValue)
    if found.field == "outer.1.inner":
        assert ("surrogate" in found.reason) == isinstance(bad, str)


def test_field_names_follow_the_params_error_style():
    assert find_bad_value({"text": "ok\ud800"}) == BadValue("text", "contains a lone surrogate, which is not valid Unicode")
    assert find_bad_value({"env": {"PATH": "/bin", "X": "\udc00"}}).field == "env.X"
    assert find_bad_value({"args": ["a", "b", "\ud83d"]}).field == "args.2"
    assert find_bad_value({"since_ts": float("inf")}) == BadValue("since_ts", "is not a finite number")
    assert find_bad_value({"env": {"\ud800": "x"}}).field == "env"
    assert find_bad_value("\ud800") == BadValue("(params)", "contains a lone surrogate, which is not valid Unicode")
    assert find_bad_value({"emoji": "\U0001f600", "n": 1e308}) is None


def test_depth_is_bounded_without_recursion():
    deep = current = []
    for _ in range(100_000):  # far past the interpreter's recursion limit
        current.append([])
        current = current[0]
    found = find_bad_value({"x": deep})
    assert found is not None and "nested deeper" in found.reason
    at_limit = {}
    node = at_limit
    for _ in range(MAX_DEPTH - 1):
        node["a"] = {}
        node = node["a"]
    assert find_bad_value(at_limit) is None
