"""The README's code runs as printed: its Python example against a real daemon found the
way a user's would be (the discovery file under $CHEETAHCLAWS_HOME)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_python_example_drives_a_demo_session_to_a_written_file(unix_daemon, tmp_path):
    [example] = python_blocks()
    env = {**os.environ, "CHEETAHCLAWS_HOME": str(unix_daemon.data_dir)}
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Wrote hello.txt" in result.stdout
    assert (tmp_path / "hello.txt").exists()


def test_the_setup_commands_are_the_ci_command():
    text = README.read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)[:2]
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands[1] == ci, "the README's test command and .ci/run must be the same command"
    assert commands[0].endswith("cheetahclaws serve")


def test_the_layout_table_names_every_module_and_only_modules_that_exist():
    """The README's layout table is the map a new contributor reads first: a module added
    without a line, or a line left behind by a move, makes it lie."""
    text = README.read_text()
    table = text[text.index("## Layout"):].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named: set[Path] = set()
    for row in rows:
        cell = row.split("|")[1]
        paths = re.findall(r"`([^`]+)`", cell)
        base = ROOT / Path(paths[0]).parent
        for name in paths:
            path = ROOT / name if "/" in name else base / name
            assert path.exists(), f"the layout table names {name}, which does not exist"
            named.add(path.resolve())
    package = ROOT / "cc_daemon"
    modules = {p.resolve() for p in package.iterdir()
               if (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))
               or (p.is_dir() and not p.is_symlink() and (p / "__init__.py").exists())}
    assert modules - named == set(), "modules missing from the README's layout table"
