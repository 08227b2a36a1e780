"""The reference project's own daemon tests, run against cc_daemon: ``python -m bench.reference_tests``.

Owns: fetching those tests and running them, adapted only in how the daemon is started.
Its spike tests (``tests/test_daemon_spike.py``) come from the cheetahclaws 3.5.89 sdist
on PyPI; its fixture builds the reference's server with ``make_tcp_server``, which a
``conftest.py`` written here replaces with a cc_daemon ``serve`` on the same port and
token. Its end-to-end tests (``tests/e2e_daemon_skeleton.py``) are not in the sdist: given
a copy with ``--e2e FILE``, their ``cheetahclaws.py serve`` becomes cc_daemon's and their
``cheetahclaws.py daemon ...`` the CLI named by ``--cli`` (the reference's, or ours), and
their ``from daemon import`` follows the package to ``cheetahclaws.daemon``. Everything
runs under pytest in the reference's virtualenv, with a throw-away ``HOME``.

Must not: be part of the test suite (their tests check things cc_daemon does differently
on purpose, RFC 0001 §10), or keep their code: it is unpacked into a temporary directory.
Tests of the reference's own classes (its ring buffer, permission and originator stores)
are left out: they never reach a daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .reference import DEFAULT_CACHE_DIR, PACKAGE, VERSION, ensure_reference

SPIKE_TESTS = f"{PACKAGE}-{VERSION}/tests/test_daemon_spike.py"

#: Replaces the reference's server constructor before the spike tests import it. The
#: heartbeat test shrinks the reference's interval to 0.5 s; cc_daemon gets the same.
SPIKE_CONFTEST = '''
import json, os, signal, subprocess
import cheetahclaws.daemon.server as server

SERVE = json.loads(os.environ["CCD_SERVE"])


def pytest_collection_modifyitems(config, items):
    items[:] = [item for item in items
                if item.path.name != "test_daemon_spike.py" or "daemon_tcp" in getattr(item, "fixturenames", ())]


class OurDaemon:
    def __init__(self, host, port, data_dir, token):
        token_path = data_dir / "daemon_token"
        descriptor = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(descriptor, (token + "\\n").encode())
        os.close(descriptor)
        self.process = subprocess.Popen(
            [*SERVE, "--listen", f"tcp://{host}:{port}", "--data-dir", str(data_dir), "--heartbeat-s", "0.5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.daemon_state = self  # the fixture calls daemon_state.shutdown()

    def serve_forever(self, poll_interval=0.5):
        self.process.wait()

    def shutdown(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    def server_close(self):
        pass


server.make_tcp_server = lambda host, port, *, data_dir, token, **_: OurDaemon(host, port, data_dir, token)
'''


def spike_tests(cache_dir: Path, python: Path, into: Path) -> Path:
    """The spike tests from the sdist (downloaded once into ``cache_dir``), unpacked in ``into``."""
    sdist = cache_dir / f"{PACKAGE}-{VERSION}.tar.gz"
    if not sdist.exists():
        subprocess.run([str(python), "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--no-binary", ":all:", "--dest", str(cache_dir), f"{PACKAGE}=={VERSION}"],
                       check=True)
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(SPIKE_TESTS)
        (into / "test_daemon_spike.py").write_bytes(member.read())
    (into / "conftest.py").write_text(SPIKE_CONFTEST)
    return into / "test_daemon_spike.py"


def adapted_e2e(source: Path, into: Path) -> Path:
    """Their end-to-end tests, with our daemon and the chosen CLI in place of ``cheetahclaws.py``."""
    text = source.read_text()
    replacements = {'[sys.executable, "cheetahclaws.py", "serve",': '[*json.loads(os.environ["CCD_SERVE"]),',
                    '[sys.executable, "cheetahclaws.py", *args]': '[*json.loads(os.environ["CCD_CLI"]), *args]',
                    "from daemon import": "from cheetahclaws.daemon import"}
    for old, new in replacements.items():
        if old not in text:
            raise SystemExit(f"{source} does not contain {old!r}: not the file this adapts")
        text = text.replace(old, new)
    target = into / "test_e2e_daemon_skeleton.py"
    target.write_text(text)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference_tests", description=__doc__.split("\n\n")[0])
    parser.add_argument("--e2e", type=Path, metavar="FILE",
                        help="a copy of the reference's tests/e2e_daemon_skeleton.py (github.com/SafeRL-Lab/cheetahclaws)")
    parser.add_argument("--cli", choices=("reference", "ours"), default="reference",
                        help="which CLI the end-to-end tests' `daemon ...` commands run (default: the reference's)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k heartbeat)")
    args = parser.parse_args(argv)

    executable = ensure_reference(args.cache_dir)
    python = executable.with_name("python")
    # pytest joins the reference's own virtualenv, never ours.
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "pytest"],
                   check=True)
    ours = [sys.executable, "-m", "cc_daemon"]
    work = Path(tempfile.mkdtemp(prefix="ccd-reftests-"))
    try:
        files = [spike_tests(args.cache_dir, python, work)]
        if args.e2e:
            files.append(adapted_e2e(args.e2e, work))
        env = {key: value for key, value in os.environ.items() if key != "CHEETAHCLAWS_HOME"}
        (work / "home").mkdir()
        env.update(HOME=str(work / "home"), CCD_SERVE=json.dumps([*ours, "serve"]),
                   CCD_CLI=json.dumps([str(executable)] if args.cli == "reference" else ours))
        return subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q",
                               *map(str, files), *args.pytest_args], cwd=work, env=env).returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
