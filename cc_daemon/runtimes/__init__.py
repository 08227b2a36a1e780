"""Agent runtimes: the processes a session runs, and the protocol they speak (RFC 0004).

Two sides live here and must stay apart:

- the daemon side: ``protocol`` (message schemas, encoding, validation, line splitting)
  and ``registry`` (which runtimes exist, how to launch each, what version is installed);
- the runtime side, imported by the runtime *processes*: ``agent`` (the channel to the
  daemon and the turn loop) and the built-in runtimes ``demo``, ``command`` and ``claude``,
  each runnable as ``python -m cc_daemon.runtimes.<name>``.

The runtime side never imports the daemon side, so a runtime process starts fast (no
jsonschema, no daemon services). This module itself is deliberately empty of code for
the same reason: every ``python -m cc_daemon.runtimes.x`` imports it.
"""
