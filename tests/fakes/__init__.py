"""Fakes for the session tests: a fake ``claude`` CLI and misbehaving runtimes installed
through a real entry point."""
