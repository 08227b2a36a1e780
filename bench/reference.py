"""The reference daemon's installation: a private virtualenv with ``cheetahclaws==3.5.89``.

Owns: creating that virtualenv once under ``bench/.cache`` (or another cache dir) and
finding its ``cheetahclaws`` executable and its interpreter; an unfinished install is
redone, a finished one is reused. The benchmarks and the compatibility tests
(``tests/test_reference_compat.py``) share it, so a checkout installs it once.

Must not: start the reference (``bench.servers`` does, and the tests start our daemon),
or install anything into the interpreter that runs cc_daemon: the reference's
dependencies must not leak into ours.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "cheetahclaws"
VERSION = "3.5.89"
INSTALL_TIMEOUT_S = 600
#: Git-ignored (bench/.gitignore).
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".cache"


class ReferenceUnavailable(RuntimeError):
    """The reference cannot be installed here (no network, no PyPI...); the message says why."""


def ensure_reference(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The path of the reference's ``cheetahclaws`` executable, installing it if needed.
    Its interpreter is ``python`` beside it."""
    venv = cache_dir / f"{PACKAGE}-{VERSION}"
    executable = venv / "bin" / PACKAGE
    finished = venv / ".installed"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A benchmark and a test run may start at once: one installs, the other waits for it.
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if finished.exists() and executable.exists():
            return executable
        shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from an interrupted run
        print(f"# installing the reference {PACKAGE}=={VERSION} into {venv} (once; cached)", file=sys.stderr,
              flush=True)
        _run([sys.executable, "-m", "venv", str(venv)], "create the virtualenv")
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              f"{PACKAGE}=={VERSION}"], f"pip install {PACKAGE}=={VERSION}")
        if not executable.exists():
            raise ReferenceUnavailable(f"{PACKAGE}=={VERSION} installed no {PACKAGE} executable")
        finished.touch()
        return executable


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ReferenceUnavailable(f"cannot {what}: no answer within {INSTALL_TIMEOUT_S} s") from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "error" in line.lower()]
        detail = (errors or done.stderr.splitlines() or ["(no output)"])[-1]
        raise ReferenceUnavailable(f"cannot {what} (exit {done.returncode}): {detail}")
