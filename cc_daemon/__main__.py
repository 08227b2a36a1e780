"""``python -m cc_daemon ...``: the same CLI as ``cheetahclaws`` and ``cc-daemon``."""

import sys

from cc_daemon.commands import main

sys.exit(main())
