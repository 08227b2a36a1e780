"""Explicit state machines: a table of allowed transitions, and the one check of a move.

Owns: ``Transitions``, a table from each state to the states it may move to (staying in a
state is listed where the code really does it), and ``IllegalTransition``, what a move the
table does not list raises.

Why raise rather than log: every move is made by the daemon's own code (clients and runtimes
can only ask; what they ask is validated before anything moves), so an unlisted move is a
bug. Raising refuses it, so the state, and the ``session_state`` events clients act on,
never leave the table; the bug surfaces where it happened, as an exception in a unit test
and as a traceback in a daemon (an RPC call's internal error, a failed listener or timer
callback, an uncaught exception in a supervisor's thread).

Must not: hold a machine's state or do its side effects: each machine keeps its state and
calls ``check`` from its one transition function.
"""

from __future__ import annotations

from typing import Iterable, Mapping


class IllegalTransition(RuntimeError):
    """A move its machine's table does not allow: a bug in the daemon, never a client's fault."""


class Transitions:
    """An immutable table of allowed moves; its states keep the order they are given in."""

    def __init__(self, machine: str, table: Mapping[str, Iterable[str]]):
        self.machine = machine
        self.table = {state: frozenset(targets) for state, targets in table.items()}
        unknown = {target for targets in self.table.values() for target in targets} - self.table.keys()
        if unknown:
            raise ValueError(f"{machine}: moves to states the table does not define: {sorted(unknown)}")

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(self.table)

    def allows(self, current: str, new: str) -> bool:
        return new in self.table.get(current, ())

    def check(self, current: str, new: str) -> None:
        if not self.allows(current, new):
            raise IllegalTransition(f"{self.machine}: {current} -> {new} is not an allowed transition")
