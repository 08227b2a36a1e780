"""The data dir's layout: ``DataDir`` names every path, and the documented layout is the same."""

from __future__ import annotations

import re
from pathlib import Path

from cc_daemon.storage import DataDir

ROOT = Path(__file__).resolve().parent.parent
LAYOUT_RFC = ROOT / "docs" / "RFC" / "0001-wire-contract.md"
LAYOUT = DataDir(Path("/data-dir"))


def documented_layout() -> set[str]:
    """The paths of RFC 0001's data-dir layout table, relative to the data dir."""
    table = LAYOUT_RFC.read_text().split("Data-dir layout:", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^\| `([^`]+)` \|", table, re.M))


def relative(path: Path) -> str:
    return str(path.relative_to(LAYOUT.root))


def test_every_file_datadir_names_is_documented_and_every_documented_file_is_in_a_datadir_path():
    properties = [name for name, value in vars(DataDir).items() if isinstance(value, property)]
    files = {relative(getattr(LAYOUT, name)) for name in properties if not name.endswith("_dir")}
    files.add(relative(LAYOUT.session_stderr("<session_id>")))
    directories = {relative(getattr(LAYOUT, name)) for name in properties if name.endswith("_dir")}
    documented = documented_layout()
    assert files <= documented
    for path in documented - files:  # files others name inside a directory DataDir gives them
        assert str(Path(path).parent) in directories, path
