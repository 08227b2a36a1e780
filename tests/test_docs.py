"""The RFCs in docs/RFC say what the code does: these tests fail when the two drift apart.

Schemas, limits and defaults are read out of the documents (their ```json blocks and
tables) and compared with the values the code uses; names the code registers or publishes
(RPC methods, event types, error codes) must each appear in some RFC; every relative link
in the docs and the README must lead to a file that exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cc_daemon import errors
from cc_daemon.eventlog import SqliteEventStore
from cc_daemon.events import GAP, SHUTDOWN, EventBus
from cc_daemon.methods.events import MAX_LIMIT
from cc_daemon.methods.unserved import NOT_SERVED
from cc_daemon.runtimes import protocol
from cc_daemon.supervisor import PARK_EXIT_CODE, SupervisionConfig

ROOT = Path(__file__).resolve().parent.parent
RFC_DIR = ROOT / "docs" / "RFC"
RFCS = sorted(RFC_DIR.glob("*.md"))
EVENT_LOG_RFC = RFC_DIR / "0003-event-log.md"
RUNTIME_RFC = RFC_DIR / "0004-runtime-protocol.md"

FENCE_RE = re.compile(r"^```.*?^```", re.S | re.M)
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TABLE_ROW_RE = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+)\|", re.M)
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
PUBLISHED_TYPE_RE = re.compile(r"(?:publish|_emit)\(\s*\"([a-z_]+)\"")


def all_rfc_text() -> str:
    return "\n".join(path.read_text() for path in RFCS)


def sections(text: str, level: int) -> dict[str, str]:
    """Heading text -> body, for the headings of exactly ``level`` '#'s (fenced code skipped)."""
    marker = "#" * level + " "
    out: dict[str, str] = {}
    heading, body, in_fence = None, [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            if heading is not None:
                out[heading] = "\n".join(body)
            heading, body = (line[len(marker):].strip(), []) if line.startswith(marker) else (None, [])
            continue
        body.append(line)
    if heading is not None:
        out[heading] = "\n".join(body)
    return out


def first_json_block(body: str) -> object:
    match = re.search(r"^```json\n(.*?)^```", body, re.S | re.M)
    assert match, "no ```json block"
    return json.loads(match.group(1))


def documented_schemas(direction: str) -> dict[str, object]:
    """The message schemas documented under the ## section whose title names ``direction``."""
    chapters = [body for title, body in sections(RUNTIME_RFC.read_text(), 2).items() if direction in title]
    assert len(chapters) == 1, f"exactly one section titled '{direction}' in {RUNTIME_RFC.name}"
    schemas = {}
    for title, body in sections(chapters[0], 3).items():
        name = re.fullmatch(r"`(\w+)`", title)
        assert name, f"message headings are a backticked type, got {title!r}"
        schemas[name.group(1)] = first_json_block(body)
    return schemas


def table_values(text: str) -> dict[str, str]:
    """``| `name` | value |`` rows of every table in ``text``."""
    return {name: value.strip() for name, value in TABLE_ROW_RE.findall(text)}


def first_number(cell: str) -> float:
    match = NUMBER_RE.search(cell)
    assert match, f"no number in {cell!r}"
    return float(match.group().replace(",", ""))


# -- RFC 0004: the runtime protocol -----------------------------------------------------------
@pytest.mark.parametrize("direction, code", [("Daemon to runtime", protocol.TO_RUNTIME),
                                             ("Runtime to daemon", protocol.FROM_RUNTIME)])
def test_every_runtime_message_is_documented_with_the_codes_schema(direction, code):
    documented = documented_schemas(direction)
    assert list(documented) == list(code), "the same messages, in the same order"
    for name, schema in code.items():
        # Through JSON so that tuples and lists compare alike, as a reader of the doc sees them.
        assert documented[name] == json.loads(json.dumps(schema)), f"schema of {name!r} differs from protocol.py"


def test_the_documented_protocol_limits_and_supervision_timings_are_the_codes():
    values = table_values(RUNTIME_RFC.read_text())
    config = SupervisionConfig()
    expected = {
        "PROTOCOL_VERSION": protocol.PROTOCOL_VERSION,
        "MAX_LINE_BYTES": protocol.MAX_LINE_BYTES,
        "MAX_CHUNK_CHARS": protocol.MAX_CHUNK_CHARS,
        "PARK_EXIT_CODE": PARK_EXIT_CODE,
        **{name: getattr(config, name) for name in config.__dataclass_fields__},
    }
    missing = sorted(set(expected) - set(values))
    assert not missing, f"not in a table of {RUNTIME_RFC.name}: {missing}"
    wrong = {name: (values[name], value) for name, value in expected.items() if first_number(values[name]) != value}
    assert not wrong, f"documented vs code: {wrong}"


# -- RFC 0003: the event log -------------------------------------------------------------------
def test_the_documented_serve_defaults_of_the_event_log_are_the_clis():
    from cc_daemon.commands.settings import BY_NAME

    defaults = {name: setting.default for name, setting in BY_NAME.items()}
    rows = re.findall(r"^\|[^|]+\|\s*([^|]+?)\s*\|\s*`(--[a-z-]+)[^`]*`[^|]*\|$", EVENT_LOG_RFC.read_text(), re.M)
    assert len(rows) >= 4, "the retention table lists its serve flags"
    for default, flag in rows:
        code = defaults[flag[2:].replace("-", "_")]
        if isinstance(code, str):
            assert default.strip("`") == code, flag
        else:
            assert first_number(default) == code, f"{flag}: documented {default!r}, code {code!r}"


def test_the_event_logs_documented_bounds_are_the_codes():
    text = " ".join(EVENT_LOG_RFC.read_text().split())  # prose wraps anywhere
    for phrase in (f"at most {EventBus.PAGE} events", f"at most {SqliteEventStore.PRUNE_CHUNK:,} of the oldest",
                   f"examines at most {SqliteEventStore.QUERY_SCAN:,} ids",
                   f"up to {SqliteEventStore.READERS} read-only connections", f"| `limit` | 1–{MAX_LIMIT} |"):
        assert phrase in text, f"{EVENT_LOG_RFC.name} should say {phrase!r}"


# -- names the code defines --------------------------------------------------------------------
def test_every_rpc_method_the_daemon_registers_is_named_in_an_rfc(tcp_daemon):
    names = tcp_daemon.daemon.registry.names()
    assert len(names) > 20  # the whole registry, sessions included
    text = all_rfc_text()
    undocumented = [name for name in names if f"`{name}`" not in text]
    assert not undocumented, f"methods missing from docs/RFC: {undocumented}"


def test_the_reference_namespaces_left_out_are_the_ones_rfc_0001_lists():
    section = sections((RFC_DIR / "0001-wire-contract.md").read_text(), 3)[
        "10.3 Reference namespaces cc_daemon does not serve"]
    assert {name for name, _ in TABLE_ROW_RE.findall(section)} == set(NOT_SERVED)


def test_every_event_type_the_code_publishes_is_named_in_an_rfc():
    source = "\n".join(path.read_text() for path in (ROOT / "cc_daemon").rglob("*.py"))
    types = set(PUBLISHED_TYPE_RE.findall(source)) | {GAP, SHUTDOWN}
    assert len(types) > 25, "the pattern still finds the publishers"
    text = all_rfc_text()
    undocumented = sorted(t for t in types if f"`{t}`" not in text)
    assert not undocumented, f"event types missing from docs/RFC: {undocumented}"


def test_every_json_rpc_error_code_is_documented():
    codes = set(errors.CODES.values())
    assert {errors.NOT_ORIGINATOR, errors.STORAGE_UNAVAILABLE, errors.SESSION_NOT_FOUND} <= codes
    text = all_rfc_text()
    undocumented = sorted(code for code in codes if f"| {code} |" not in text)
    assert not undocumented, f"error codes without a row in a docs/RFC table: {undocumented}"


@pytest.mark.parametrize("document", RFCS, ids=lambda path: path.name)
def test_every_json_example_in_the_rfcs_is_json(document):
    blocks = re.findall(r"^```json\n(.*?)^```", document.read_text(), re.S | re.M)
    for block in blocks:
        try:
            json.loads(block)
        except ValueError as exc:
            pytest.fail(f"{document.name}: a ```json block is not JSON ({exc}):\n{block[:200]}")


# -- links -------------------------------------------------------------------------------------
@pytest.mark.parametrize("document", [ROOT / "README.md", *RFCS], ids=lambda path: path.name)
def test_relative_links_lead_to_existing_files(document):
    text = FENCE_RE.sub("", document.read_text())
    targets = [target for target in LINK_RE.findall(text)
               if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]
    broken = [target for target in targets if not (document.parent / target.split("#")[0]).exists()]
    assert not broken, f"{document.name}: links to missing files: {broken}"
