"""Profiles: independent daemons of one user, each with its own data dir.

Owns: what a profile name may be, which data dir a profile uses, which profile is meant
when none is named (``$CHEETAHCLAWS_PROFILE``, else ``default``), the profiles that exist,
and the name of each profile's service unit. A profile's socket, token, logs, database and
``config.toml`` all live in its data dir (``storage.DataDir``), so two profiles never share
a file. ``default`` keeps the paths a daemon had before profiles existed
(``$CHEETAHCLAWS_HOME`` or ``~/.cheetahclaws``); another profile NAME lives in
``<that dir>/profiles/NAME``.

Must not: create directories, read or write files (listing directories excepted), or know
about a running daemon.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HOME_ENV = "CHEETAHCLAWS_HOME"
#: Which profile a CLI verb or the client library means when none is named. The daemon sets
#: it for the runtimes it starts, so an agent's own calls reach the daemon that runs it.
PROFILE_ENV = "CHEETAHCLAWS_PROFILE"
DEFAULT = "default"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,30}\Z")
PROFILES_DIR = "profiles"


class BadProfileName(ValueError):
    """A profile name outside ``[a-z0-9][a-z0-9-]{0,30}``."""


def checked(name: str) -> str:
    """``name`` if it is a valid profile name; ``BadProfileName`` says what is allowed otherwise."""
    if not NAME_RE.match(name):
        raise BadProfileName(f"profile name {name!r} must be 1-31 characters: lower-case letters, digits "
                             "and '-', starting with a letter or a digit")
    return name


def base_dir() -> Path:
    """The default profile's data dir, under which the other profiles live."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cheetahclaws"


def current() -> str:
    """The profile meant when none is named: ``$CHEETAHCLAWS_PROFILE`` if set, else ``default``."""
    return checked(os.environ.get(PROFILE_ENV) or DEFAULT)


def data_dir_of(name: str) -> Path:
    """Where profile ``name`` keeps everything."""
    return base_dir() if checked(name) == DEFAULT else base_dir() / PROFILES_DIR / name


def existing() -> list[str]:
    """The profiles with a data dir, ``default`` first (listed even before it has one)."""
    found = [DEFAULT]
    try:
        entries = sorted(os.scandir(base_dir() / PROFILES_DIR), key=lambda entry: entry.name)
    except OSError:
        return found
    found += [entry.name for entry in entries
              if NAME_RE.match(entry.name) and entry.name != DEFAULT and entry.is_dir(follow_symlinks=False)]
    return found


def service_name(name: str) -> str:
    """The systemd unit (without ``.service``) and launchd label stem of profile ``name``."""
    return "cheetahclaws-daemon" if checked(name) == DEFAULT else f"cheetahclaws-daemon-{name}"
