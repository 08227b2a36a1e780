"""The project as a new user gets it: entry points, packaging, and a suite that keeps out of $HOME.

Every command runs from the virtualenv the suite runs in (scripts next to ``sys.executable``),
never from a name looked up on PATH, so a machine where nothing of the project is installed
globally passes too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.daemons import short_tmpdir

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(sys.executable).parent
#: What a copy of the source needs to build; caches and virtualenvs would only slow the copy.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "bench")


def answers_help(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60, cwd=cwd,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{command} in {cwd}: {result.stderr}"
    assert "serve" in result.stdout and "daemon" in result.stdout
    return result


@pytest.mark.parametrize("script", ["cheetahclaws", "cc-daemon"])
def test_console_scripts_answer_help(script, tmp_path):
    answers_help([str(SCRIPTS / script)], tmp_path)


def test_python_dash_m_answers_help_from_the_repository_root():
    answers_help([sys.executable, "-m", "cc_daemon"], ROOT)


def test_python_dash_m_from_a_source_checkout_with_pythonpath():
    """No install at all: -S keeps site-packages (and any editable finder in it) out of the way."""
    answers_help([sys.executable, "-S", "-m", "cc_daemon"], ROOT, {"PYTHONPATH": "."})
    found = subprocess.run([sys.executable, "-S", "-c", "import cc_daemon.commands as c; print(c.__file__)"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": "."})
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == ROOT / "commands" / "__init__.py"


@pytest.fixture(scope="module")
def source_copy() -> Path:
    """A copy of the checkout to build from, so that building leaves nothing in the real one."""
    copy = short_tmpdir() / "src"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=NOT_SOURCE)
    yield copy
    shutil.rmtree(copy.parent, ignore_errors=True)


def pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_regular_install_works_from_the_repository_root_and_elsewhere(source_copy, tmp_path):
    target = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(target), str(source_copy))
    installed = target / "cc_daemon" / "commands"
    assert installed.is_dir() and not installed.is_symlink() and (installed / "__init__.py").is_file()
    assert not (target / "commands").exists(), "no generic top-level 'commands' package in site-packages"
    # The web workbench's files are package data: every one of them is installed.
    shipped = target / "cc_daemon" / "webui" / "static"
    assert sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(ROOT / "cc_daemon" / "webui" / "static").as_posix()
               for p in (ROOT / "cc_daemon" / "webui" / "static").rglob("*") if p.is_file())
    env = {"PYTHONPATH": str(target)}
    # From the repository root ./cc_daemon comes first on sys.path and shadows the installed copy.
    answers_help([sys.executable, "-S", "-m", "cc_daemon"], source_copy, env)
    elsewhere = subprocess.run([sys.executable, "-S", "-c", "import cc_daemon.commands as c; print(c.__file__)"],
                               capture_output=True, text=True, timeout=30, cwd=tmp_path, env={**os.environ, **env})
    assert Path(elsewhere.stdout.strip()).is_relative_to(target), elsewhere.stderr
    answers_help([sys.executable, "-S", "-m", "cc_daemon"], tmp_path, env)


def test_editable_install_works_from_the_repository_root(source_copy, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "-e", str(source_copy))
    answers_help([str(venv / "bin" / "python"), "-m", "cc_daemon"], source_copy)
    answers_help([str(venv / "bin" / "python"), "-m", "cc_daemon"], tmp_path)
    answers_help([str(venv / "bin" / "cheetahclaws")], tmp_path)


def test_every_test_gets_a_private_home(private_home):
    assert Path.home() == private_home and Path(os.environ["HOME"]) == private_home
    assert Path(os.environ["CHEETAHCLAWS_HOME"]).is_relative_to(private_home)
    assert os.environ["XDG_RUNTIME_DIR"] != "/run/user/0"


def test_a_run_of_the_cli_tests_leaves_the_real_home_untouched():
    """Runs test modules that use the default data dir, and a browser test (chromium writes
    its config and caches under HOME), with HOME set to an empty directory standing in for
    the real home: it must still be empty afterwards."""
    real_home = short_tmpdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("CHEETAHCLAWS_HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cli_client.py",
                             "tests/test_browser.py::test_a_demo_session_end_to_end_from_the_page"],
                            cwd=ROOT, capture_output=True, text=True, timeout=240, env={**env, "HOME": str(real_home)})
    try:
        assert result.returncode == 0, result.stdout[-2000:]
        assert list(real_home.iterdir()) == []
    finally:
        shutil.rmtree(real_home, ignore_errors=True)
