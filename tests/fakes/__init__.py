"""Fakes and helpers for the session tests: a fake ``claude`` CLI, misbehaving runtimes
installed through a real entry point, and a watching frontend."""
