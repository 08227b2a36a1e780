"""The settings of ``serve``: one table, and where each value in force comes from.

Owns: every ``serve`` setting (its flag, environment variable, key in
``<data-dir>/config.toml``, type, default and help), reading that file, and resolving each
setting in the order flag, then environment (``CHEETAHCLAWS_<NAME>``), then file, then
default, remembering which one gave it (``daemon config`` shows it). An unknown key or a bad
value is a ``SettingError`` naming the key, the file and its line (or the variable, or the
flag).

Must not: import the daemon (``serve``'s cold start and ``--help`` pay for every import),
or know what a setting does: ``serve.options_from`` turns the values into the daemon's
options.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

CONFIG_FILE = "config.toml"
ENV_PREFIX = "CHEETAHCLAWS_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingError(ValueError):
    """A setting that cannot be used; the message names where it was given and why."""


@dataclass(frozen=True)
class Setting:
    """One ``serve`` setting. ``kind``: int and float (both positive), choice, bool, path, or
    list (of strings: a repeatable flag, a comma-separated variable, an array in the file)."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def from_text(self, text: str) -> Any:
        """The value of ``text`` as a flag's argument or a variable's value gives it (one item
        for a list's flag), or ``ValueError`` saying what is expected."""
        if self.kind == "int":
            return positive(int, text)
        if self.kind == "float":
            return positive(float, text)
        if self.kind == "choice":
            if text not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}, not {text!r}")
            return text
        if self.kind == "bool":
            if text.strip().lower() in TRUE_WORDS:
                return True
            if text.strip().lower() in FALSE_WORDS:
                return False
            raise ValueError(f"must be one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, not {text!r}")
        if not text.strip():
            raise ValueError("must not be empty")
        return text

    def from_env(self, text: str) -> Any:
        if self.kind == "list":
            return [self.from_text(item.strip()) for item in text.split(",") if item.strip()]
        return self.from_text(text)

    def from_file(self, value: Any) -> Any:
        """The value of a TOML value, or ``ValueError``: numbers must be numbers, flags booleans,
        lists arrays of strings, the rest strings."""
        expected = {"int": (int,), "float": (int, float), "bool": (bool,), "list": (list,)}.get(self.kind, (str,))
        if not isinstance(value, expected) or (isinstance(value, bool) and self.kind != "bool"):
            noun = {"int": "an integer", "float": "a number", "bool": "true or false",
                    "list": "an array of strings"}.get(self.kind, "a string")
            raise ValueError(f"must be {noun}, not {type(value).__name__} {value!r}")
        if self.kind == "list":
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"must be an array of strings, not {value!r}")
            return [self.from_text(item) for item in value]
        return value if self.kind == "bool" else self.from_text(str(value))

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        # Flags default to None: a value absent from the command line falls through to the
        # environment, the file and the default (argparse would hide that difference).
        help_text = f"{self.help} (default {describe(self.default)}; env {self.env}; {CONFIG_FILE}: {self.name})"
        if self.kind == "bool":
            parser.add_argument(self.flag, dest=self.name, action="store_const", const=True, default=None,
                                help=help_text)
            return
        parser.add_argument(self.flag, dest=self.name, default=None, metavar=self.metavar,
                            action="append" if self.kind == "list" else "store",
                            choices=self.choices or None, type=None if self.choices else argparse_type(self),
                            help=help_text)


def positive(convert: Callable[[str], Any], text: str) -> Any:
    noun = "an integer" if convert is int else "a number"
    try:
        value = convert(text)
    except ValueError:
        raise ValueError(f"must be {noun}, not {text!r}") from None
    if not value > 0 or (isinstance(value, float) and math.isinf(value)):
        raise ValueError(f"must be positive and finite, not {text}")
    return value


def argparse_type(setting: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return setting.from_text(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def describe(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(value) or "none"
    return str(value)


#: Every setting of ``serve``, in ``--help``'s order. Defaults are literals (the daemon's
#: own, copied) so that reading them imports nothing; tests/test_config.py holds them to the
#: daemon's.
SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "list", [], "unix:///abs/path.sock or tcp://HOST:PORT (port 0 picks a free port); give it "
            "again to listen on more than one address; none given: unix://<data-dir>/run/daemon.sock", metavar="URL"),
    Setting("token_path", "path", None, "bearer token file; none: <data-dir>/daemon_token", metavar="PATH"),
    Setting("print_token", "bool", False, "print the TCP bearer token at start"),
    Setting("heartbeat_s", "float", 15.0, "SSE comment heartbeat after S seconds without an event", metavar="S"),
    Setting("log_level", "choice", "info", "the least severe log lines written (debug: one line per RPC call "
            "with its method, duration and outcome)", choices=LOG_LEVELS),
    Setting("log_format", "choice", "text", "text lines, or one JSON object per line; each line written while "
            "serving a request carries its id", choices=LOG_FORMATS),
    Setting("no_audit", "bool", False, "do not write logs/auth.jsonl"),
    Setting("unauthenticated_metrics", "bool", False, "serve /healthz, /readyz and /metrics without authentication"),
    Setting("allow_remote", "bool", False, "allow a non-loopback TCP address (there is no TLS)"),
    Setting("allow_origin", "list", [], "browser origin allowed to call the daemon (repeatable)", metavar="ORIGIN"),
    Setting("event_buffer", "int", 65536, "recent events kept in memory for the live tail; older ones are read "
            "from the database", metavar="N"),
    Setting("event_buffer_mb", "float", 16.0, "and at most M megabytes of them (the newest event is always kept)",
            metavar="M"),
    Setting("retention_events", "int", 1_000_000, "events kept in <data-dir>/daemon.db for replay", metavar="N"),
    Setting("retention_days", "float", 7.0, "drop stored events older than D days", metavar="D"),
    Setting("event_log_sync", "choice", "normal", "normal: a published event survives a crash or kill -9 of the "
            "daemon; full: also power loss, at one fsync per group commit", choices=("normal", "full")),
    Setting("max_body_bytes", "int", 1024 * 1024, "largest accepted request body (larger gets 413)", metavar="N"),
    Setting("max_connections", "int", 512, "open connections served at once (beyond it 503)", metavar="N"),
    Setting("max_sessions", "int", 8, "agent sessions running at once (session.create refuses more)", metavar="N"),
    Setting("max_queued_turns", "int", 16, "turns waiting per session behind the running one (session.send "
            "refuses more)", metavar="N"),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Resolved:
    """A setting's value in force, and where it came from (``flag --x``, ``env CHEETAHCLAWS_X``,
    ``<file> line N``, ``default``)."""

    value: Any
    source: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for setting in SETTINGS:
        setting.add_to(parser)


def resolve(args: argparse.Namespace | None, env: Mapping[str, str], data_dir: Path) -> dict[str, Resolved]:
    """Every setting's value: flag (``args``; None when there is no command line), then
    environment, then ``<data_dir>/config.toml``, then default; ``SettingError`` names the
    first unusable one."""
    path = data_dir / CONFIG_FILE
    from_file = read_config(path)
    resolved: dict[str, Resolved] = {}
    for setting in SETTINGS:
        given = getattr(args, setting.name, None) if args is not None else None
        if given is not None:
            resolved[setting.name] = Resolved(given, f"flag {setting.flag}")
        elif setting.env in env:
            try:
                resolved[setting.name] = Resolved(setting.from_env(env[setting.env]), f"env {setting.env}")
            except ValueError as exc:
                raise SettingError(f"environment variable {setting.env}: {exc}") from None
        elif setting.name in from_file:
            resolved[setting.name] = from_file[setting.name]
        else:
            resolved[setting.name] = Resolved(setting.default, "default")
    return resolved


def read_config(path: Path) -> dict[str, Resolved]:
    """The settings ``path`` gives (none when it does not exist), each with its line."""
    from cc_daemon.safe_paths import UnsafePath, check_dir, read_private

    try:
        check_dir(path.parent)  # a file is only as safe as the directory holding it
        raw = read_private(path)
    except FileNotFoundError:
        return {}
    except UnsafePath as exc:
        if not path.parent.exists() or not path.exists():
            return {}
        raise SettingError(str(exc)) from None
    except OSError as exc:
        raise SettingError(f"cannot read {path}: {exc.strerror}") from None
    import tomllib  # here: a daemon without a config file never loads the parser

    try:
        text = raw.decode("utf-8")
        table = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise SettingError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"{path}: not valid TOML: {exc}") from None
    found: dict[str, Resolved] = {}
    for key, value in table.items():
        where = f"{path} line {line_of(text, key)}"
        setting = BY_NAME.get(key)
        if setting is None:
            import difflib

            close = difflib.get_close_matches(key, BY_NAME, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(BY_NAME)})"
            raise SettingError(f"{where}: unknown key {key!r}{hint}")
        try:
            found[key] = Resolved(setting.from_file(value), where)
        except ValueError as exc:
            raise SettingError(f"{where}: {key} {exc}") from None
    return found


def line_of(text: str, key: str) -> int:
    """The line where top-level ``key`` is set (or its table opens); tomllib keeps no positions.
    Keys set inside another table never reach here: that table's own key is unknown first."""
    quoted = re.escape(key)
    pattern = re.compile(rf"^[ \t]*(?:{quoted}|\"{quoted}\"|'{quoted}')[ \t]*(?:=|\.)|^[ \t]*\[\[?[ \t]*"
                         rf"(?:{quoted}|\"{quoted}\"|'{quoted}')[ \t]*[\].]", re.M)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else 1
