"""Which runtimes this daemon can run, and how to launch each (daemon side).

Owns: the built-in runtimes (``demo``, ``command``, ``claude``, ``codex``, and ``custom``: a program of
the user's, given in the session's args, that speaks the runtime protocol itself), third-party
runtimes found through the ``cc_daemon.runtimes`` entry-point group, what each reports about itself
(available or not, version, path) and the command line of a session's runtime process.
A runtime that cannot run says why in words a user can act on (``RuntimeUnavailable``).

An entry point names a ``Runtime`` subclass or instance; the entry point's name is the
runtime's name. Built-in names cannot be taken over by an entry point.

Must not: spawn the runtime (the supervisor does), or speak its protocol.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__

log = logging.getLogger("cc_daemon.runtimes")

ENTRY_POINT_GROUP = "cc_daemon.runtimes"
VERSION_TIMEOUT_S = 5.0


class RuntimeUnavailable(Exception):
    """This runtime cannot run a session as asked; the message says why, for a human."""


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    summary: str
    available: bool
    version: str | None = None
    path: str | None = None
    problem: str | None = None
    source: str = "builtin"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the startup log."""
        if not self.available:
            return f"{self.name}: unavailable ({self.problem})"
        details = ", ".join(part for part in (self.version, self.path) if part)
        return f"{self.name}: {details or 'available'}" + ("" if self.source == "builtin" else f" [{self.source}]")


class Runtime(ABC):
    """A kind of agent runtime. Subclasses say what they are and how to launch them."""

    summary = ""

    def info(self, name: str, env: dict[str, str]) -> RuntimeInfo:
        """Whether it can run with ``env`` (the session's environment), and what version."""
        return RuntimeInfo(name, self.summary, True)

    @abstractmethod
    def launch(self, args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
        """The argv of the runtime process for a session, or ``RuntimeUnavailable``.
        ``args`` reach the process in its ``init`` message; only ``custom`` also takes its
        command line from them."""


def python_module(module: str, *extra: str) -> list[str]:
    """Run one of our runtime modules with the daemon's own interpreter."""
    return [sys.executable, "-m", module, *extra]


class DemoRuntime(Runtime):
    summary = "deterministic scripted agent for trying the daemon (run / write / sleep / echo)"

    def info(self, name: str, env: dict[str, str]) -> RuntimeInfo:
        return RuntimeInfo(name, self.summary, True, __version__, str(Path(__file__).with_name("demo.py")))

    def launch(self, args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
        return python_module("cc_daemon.runtimes.demo")


def require_program(runtime: str, args: list[str], cwd: Path, env: dict[str, str], example: str) -> None:
    """Check that ``args[0]`` names a program the session could start (relative paths are
    taken from the session's ``cwd``, bare names from its ``PATH``), or say why not."""
    if not args:
        raise RuntimeUnavailable(f"the {runtime} runtime needs the program to run in args, e.g. {example}")
    program = args[0]
    if "/" in program:
        candidate = (cwd / program) if not os.path.isabs(program) else Path(program)
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            raise RuntimeUnavailable(f"the {runtime} runtime cannot run {program}: "
                                     f"{candidate} is not an executable file")
    elif shutil.which(program, path=env.get("PATH")) is None:
        raise RuntimeUnavailable(f"the {runtime} runtime cannot run {program}: not found on PATH")


class CommandRuntime(Runtime):
    summary = "runs the program given in args once per turn; text on stdin or as {text}; stdout streams"

    def launch(self, args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
        require_program("command", args, cwd, env, '"args": ["cat"] or ["python3", "-c", "...", "{text}"]')
        return python_module("cc_daemon.runtimes.command")


class CustomRuntime(Runtime):
    """Your own runtime without packaging it: the session's args are the command line of a
    program that speaks the runtime protocol (RFC 0004) on its stdin and stdout. It gives a
    client no power the ``command`` runtime does not already give (running a program as the
    daemon's user), so it needs no extra permission."""

    summary = "runs the program given in args as the runtime process; it speaks the runtime protocol itself"

    def launch(self, args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
        require_program("custom", args, cwd, env, '"args": ["python3", "/abs/path/my_runtime.py"]')
        return list(args)


class HostedCliRuntime(Runtime):
    """An agent CLI found on the session's PATH, hosted for the whole session by a runtime
    module of ours (``runtimes.claude``, ``runtimes.codex``) that relays its permission
    questions to the daemon."""

    def __init__(self, program: str, module: str, npm_package: str, summary: str):
        self.program, self.module, self.npm_package, self.summary = program, module, npm_package, summary

    def info(self, name: str, env: dict[str, str]) -> RuntimeInfo:
        path = shutil.which(self.program, path=env.get("PATH"))
        if path is None:
            return RuntimeInfo(name, self.summary, False, problem=self.missing())
        version, problem = executable_version(path, os.stat(path).st_mtime_ns)
        return RuntimeInfo(name, self.summary, problem is None, version, path, problem)

    def launch(self, args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
        path = shutil.which(self.program, path=env.get("PATH"))
        if path is None:
            raise RuntimeUnavailable(self.missing())
        return python_module(self.module, "--executable", path)

    def missing(self) -> str:
        return (f"the {self.program} runtime needs the {self.program} CLI, but `{self.program}` is not on the "
                f"PATH the session would use; install it (npm install -g {self.npm_package}) or pass env.PATH")


@functools.lru_cache(maxsize=32)
def executable_version(path: str, mtime_ns: int) -> tuple[str | None, str | None]:
    """(version, problem) from ``path --version``; cached until the file changes."""
    import subprocess  # here, like the supervisor's: no idle daemon needs it

    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`{path} --version` failed: {exc}"
    if done.returncode != 0:
        return None, f"`{path} --version` exited with {done.returncode}: {done.stderr.strip()[:200]}"
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None, None


BUILTINS: dict[str, Runtime] = {
    "demo": DemoRuntime(), "command": CommandRuntime(),
    "claude": HostedCliRuntime("claude", "cc_daemon.runtimes.claude", "@anthropic-ai/claude-code",
                               "Claude Code, one process per session; its permission prompts go to the turn's "
                               "originator"),
    "codex": HostedCliRuntime("codex", "cc_daemon.runtimes.codex", "@openai/codex",
                              "Codex CLI (codex app-server), one process per session; its command and patch "
                              "approvals go to the turn's originator"),
    "custom": CustomRuntime()}


class RuntimeRegistry:
    """The runtimes by name: built-ins first, then entry points.

    The entry points are looked up at the first question, not at construction: scanning every
    installed distribution (and importing ``importlib.metadata``) costs ~40 ms of the daemon's
    start for runtimes only a session or a status query needs.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[Runtime, str]] | None = None
        self._load_lock = threading.Lock()

    @property
    def _runtimes(self) -> dict[str, tuple[Runtime, str]]:
        loaded = self._loaded
        if loaded is None:
            with self._load_lock:  # once: loading runs third-party code and logs what it skips
                if self._loaded is None:
                    self._loaded = self._discover()
                loaded = self._loaded
        return loaded

    @staticmethod
    def _discover() -> dict[str, tuple[Runtime, str]]:
        from importlib.metadata import entry_points

        runtimes: dict[str, tuple[Runtime, str]] = {name: (runtime, "builtin") for name, runtime in BUILTINS.items()}
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in runtimes:
                log.warning("ignoring runtime entry point %s (%s): the name is taken", entry.name, entry.value)
                continue
            try:
                loaded = entry.load()
                runtime = loaded() if isinstance(loaded, type) else loaded
            except Exception:
                log.exception("cannot load runtime entry point %s (%s)", entry.name, entry.value)
                continue
            if not isinstance(runtime, Runtime):
                log.warning("ignoring runtime entry point %s: %s is not a cc_daemon Runtime", entry.name, entry.value)
                continue
            distribution = entry.dist.name if entry.dist is not None else entry.value
            runtimes[entry.name] = (runtime, f"entry point from {distribution}")
        return runtimes

    def names(self) -> list[str]:
        return list(self._runtimes)

    def get(self, name: str) -> Runtime:
        try:
            return self._runtimes[name][0]
        except KeyError:
            raise RuntimeUnavailable(f"unknown runtime {name!r}; this daemon knows {', '.join(self._runtimes)}") from None

    def describe(self, env: dict[str, str] | None = None) -> list[RuntimeInfo]:
        """What each runtime reports about itself with ``env`` (default: the daemon's)."""
        env = dict(os.environ) if env is None else env
        infos = []
        for name, (runtime, source) in self._runtimes.items():
            try:
                info = runtime.info(name, env)
            except Exception as exc:  # a third-party runtime must not break discovery
                log.exception("runtime %s failed to describe itself", name)
                info = RuntimeInfo(name, runtime.summary, False, problem=f"info() failed: {exc}")
            infos.append(RuntimeInfo(**{**info.as_dict(), "source": source}))
        return infos
