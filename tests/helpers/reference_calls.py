"""Calls through the reference CLI's own RPC helper; run by the reference's interpreter.

Owns: reading a JSON list of ``[method, params]`` pairs from stdin, passing each to
``cheetahclaws.commands.daemon_cmd._call_rpc`` (what the reference's ``daemon status``
and ``stop`` use: it finds the daemon through ``~/.cheetahclaws/daemon.json`` and speaks
HTTP over TCP or the Unix socket as that file says) and printing one JSON line
``[ok, payload]`` per call, for ``tests/test_reference_compat.py``.

Must not: import cc_daemon or pytest (neither is installed in the reference's
virtualenv), or reach the daemon in any way but the reference's own code.
"""

import json
import sys

from cheetahclaws.commands.daemon_cmd import _call_rpc

for method, params in json.load(sys.stdin):
    print(json.dumps(_call_rpc(method, params)), flush=True)
