"""Helpers shared by the test modules (daemons, event streams, a watching frontend, hostile JSON)."""
