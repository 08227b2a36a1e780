"""Benchmarks of cc_daemon side by side with the reference daemon and a bare stdlib ceiling.

Run from the repository root with ``python -m bench`` (``--quick`` for a short run);
``bench/README.md`` says what is measured and how. Nothing here is part of the
pass/fail test suite: it prints numbers, it does not assert on speed.
"""
