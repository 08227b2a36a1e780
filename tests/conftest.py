"""Fixtures for the whole suite: a private home for every test, and real daemons to talk to.

The helpers behind the fixtures are in ``helpers/``; no test module imports another.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from helpers.daemons import Running, in_process, short_tmpdir, spawn_daemon

#: Where a test's private home goes; ``HOME``, ``$CHEETAHCLAWS_HOME`` and ``$XDG_RUNTIME_DIR``
#: all point inside it, so that nothing a test (or a CLI it runs) does lands in a real home.
PRIVATE_HOME_VARIABLES = {"HOME": "home", "CHEETAHCLAWS_HOME": "home/.cheetahclaws", "XDG_RUNTIME_DIR": "run"}


@pytest.fixture(autouse=True)
def private_home(monkeypatch) -> Iterator[Path]:
    """Every test gets a throwaway home; subprocesses inherit it through the environment.

    Short paths under /tmp, not pytest's tmp_path: a Unix socket under the home must fit in
    the kernel's 108 bytes."""
    root = short_tmpdir()
    for variable, relative in PRIVATE_HOME_VARIABLES.items():
        path = root / relative
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        monkeypatch.setenv(variable, str(path))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["tcp", "unix"])
def daemon(request) -> Iterator[Running]:
    """An in-process daemon, once over TCP and once over a Unix socket."""
    yield from in_process(request.param)


@pytest.fixture
def tcp_daemon() -> Iterator[Running]:
    yield from in_process("tcp")


@pytest.fixture
def unix_daemon() -> Iterator[Running]:
    yield from in_process("unix")


@pytest.fixture
def make_daemon():
    """Start in-process daemons with custom options; all are stopped at teardown."""
    started: list[Iterator[Running]] = []

    def make(transport: str = "tcp", **options) -> Running:
        generator = in_process(transport, **options)
        started.append(generator)
        return next(generator)

    yield make
    for generator in started:
        next(generator, None)


@pytest.fixture
def subprocess_daemon():
    """Start daemons as real subprocesses via the CLI; each is killed at teardown if still alive."""
    processes: list[subprocess.Popen] = []
    dirs: list[Path] = []

    def start(*extra: str, data_dir: Path | None = None) -> Running:
        root = data_dir or short_tmpdir()
        dirs.append(root)
        process, info = spawn_daemon(root, *extra)
        processes.append(process)
        token = Path(info["token_path"]).read_text().strip() if info.get("token_path") else None
        return Running(root, info["url"], token, process=process)

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
    for root in dirs:
        shutil.rmtree(root, ignore_errors=True)
