"""The real Claude Code and Codex CLIs, installed from the npm registry at pinned versions.

Owns: installing them once into ``.cache/agent-clis`` of the checkout (not global, not the
home directory) when npm is on the machine, and saying why not otherwise, so that tests of
what can be checked without an account skip with a reason instead of failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: The versions the adapters were checked against (RFC 0004 §13).
PINNED = {"claude": ("@anthropic-ai/claude-code", "2.1.332"), "codex": ("@openai/codex", "0.171.0")}
PREFIX = Path(__file__).resolve().parent.parent.parent / ".cache" / "agent-clis"
INSTALL_TIMEOUT_S = 600


def installed(program: str) -> Path | None:
    binary = PREFIX / "node_modules" / ".bin" / program
    return binary if binary.exists() else None


def install() -> tuple[Path | None, str]:
    """(the directory holding ``claude`` and ``codex``, or None; why not)."""
    wanted = [f"{package}@{version}" for package, version in PINNED.values()]
    stamp = PREFIX / "installed"
    if stamp.exists() and stamp.read_text().split() == wanted and all(installed(p) for p in PINNED):
        return PREFIX / "node_modules" / ".bin", ""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None, "node and npm are not on this machine, so the real agent CLIs cannot be installed"
    (PREFIX / "home").mkdir(parents=True, exist_ok=True)
    # --prefix also moves npm's global config to <prefix>/etc/npmrc, losing the machine's
    # (where a CA file may be set, as on CI machines behind a proxy): name it explicitly.
    # npm writes its cache and logs under $HOME: this module-scoped install runs before a
    # test's private home exists, so it gets one of its own inside the prefix.
    env = {**os.environ, "HOME": str(PREFIX / "home"), "npm_config_cache": str(PREFIX / "npm-cache")}
    machine_config = subprocess.run([npm, "config", "get", "globalconfig"], capture_output=True, text=True,
                                    timeout=60, env=env).stdout.strip()
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(PREFIX),
                           *(["--globalconfig", machine_config] if machine_config else []), *wanted],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
    if done.returncode != 0 or not all(installed(p) for p in PINNED):
        return None, f"npm install {' '.join(wanted)} failed: {done.stderr.strip()[-500:]}"
    stamp.write_text("\n".join(wanted))
    return PREFIX / "node_modules" / ".bin", ""
