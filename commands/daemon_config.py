"""``cheetahclaws daemon config``: each ``serve`` setting's value in force and where it came from.

Owns: printing what ``settings.resolve`` finds for a profile's data dir without a command
line: the environment, ``<data-dir>/config.toml`` and the defaults (flags given to ``serve``
win over all of these, and the output says so).

Must not: resolve anything itself (``settings`` does), start or contact a daemon.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import settings
from .common import add_data_dir, documented_action, fail


def add_action(actions: argparse._SubParsersAction) -> None:
    parser = documented_action(
        actions, "config", "show each serve setting in force and where it came from (environment, config.toml, "
                           "default)",
        "cheetahclaws daemon config --profile work\n\n"
        "config.toml holds any serve setting by its name, for example:\n"
        "  listen = [\"unix:///home/me/.cheetahclaws/run/daemon.sock\", \"tcp://127.0.0.1:8765\"]\n"
        "  max_sessions = 4\n  log_level = \"debug\"",
        "0 printed; 2 an unknown key or a bad value (the message names the key and the file's line, or the "
        "variable)",
        description="Show the value of every serve setting that a `cheetahclaws serve` for this profile would use, "
                    "and where it comes from: an environment variable CHEETAHCLAWS_<NAME>, a line of "
                    "<data-dir>/config.toml, or the default. A flag given to serve wins over all of them.")
    add_data_dir(parser)
    parser.add_argument("--json", action="store_true", help="print the settings as JSON")
    parser.set_defaults(run=run_config)


def run_config(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    try:
        resolved = settings.resolve(None, os.environ, data_dir)
    except settings.SettingError as exc:
        fail(str(exc), 2)
    config = data_dir / settings.CONFIG_FILE
    if args.json:
        print(json.dumps({"config_file": str(config), "exists": config.exists(),
                          "settings": [{"name": name, "value": value.value, "source": value.source,
                                        "flag": settings.BY_NAME[name].flag, "env": settings.BY_NAME[name].env}
                                       for name, value in resolved.items()]}, indent=2))
        return 0
    print(f"config file: {config}" + ("" if config.exists() else " (none)"))
    width = max(map(len, resolved))
    for name, value in resolved.items():
        print(f"{name:<{width}}  {settings.describe(value.value):<32}  {value.source}")
    print("a flag given to serve wins over each of these")
    return 0
