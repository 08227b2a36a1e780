"""Third-party runtimes for tests, found through the ``cc_daemon.runtimes`` entry point of
the ``ccd-fake-runtimes`` distribution next to this file (put on sys.path by the test).

``noisy`` writes every kind of garbage before a proper ``ready`` and then echoes turns;
``stubborn`` ignores cancel, ``stop`` and SIGTERM, so only SIGKILL ends it. The entry
point file also tries to take over ``demo`` (refused) and names a missing class (skipped).
"""

import sys
from pathlib import Path

from cc_daemon.runtimes.registry import Runtime

HERE = Path(__file__).parent


class NoisyRuntime(Runtime):
    summary = "writes malformed and oversized lines, then behaves (tests)"

    def launch(self, args, cwd, env):
        return [sys.executable, str(HERE / "noisy_runtime.py")]


class StubbornRuntime(Runtime):
    summary = "ignores cancel, stop and SIGTERM (tests)"

    def launch(self, args, cwd, env):
        return [sys.executable, str(HERE / "stubborn_runtime.py")]
