"""A session's budget: the optional limits given at ``session.create`` and what it used.

Owns: ``max_turns`` (turns started), ``max_cost_usd`` (the ``cost_usd`` its runtime
reported, summed) and ``max_wall_s`` (seconds its turns ran, summed); which limit, if any,
is exhausted; and how long the next turn may run before ``max_wall_s`` is reached. A
limit is checked where it can be honoured safely: a send that would start a turn past
``max_turns`` is refused; cost is known when a turn ends, so that is where it is checked;
wall time is watched by a timer while a turn runs, which cancels it through the runtime
protocol (a cancel is a safe point: the runtime ends the turn itself).

Must not: publish, cancel or refuse anything itself (``Session`` does, with the reasons
this returns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LIMITS = ("max_turns", "max_cost_usd", "max_wall_s")


@dataclass
class Budget:
    max_turns: int | None = None
    max_cost_usd: float | None = None
    max_wall_s: float | None = None
    turns_started: int = 0
    wall_s_used: float = 0.0
    #: The limit that was reached, once one is.
    exhausted: str | None = None

    def refusal(self, queued: int) -> str | None:
        """Why a new turn cannot be queued now, or None."""
        if self.exhausted is not None:
            return f"its {self.exhausted} budget ({self.limit_of(self.exhausted):g}) is used up"
        if self.max_turns is not None and self.turns_started + queued >= self.max_turns:
            return f"its max_turns budget ({self.max_turns}) is taken by the turns started and queued"
        return None

    def start_turn(self) -> float | None:
        """A turn starts; the seconds it may run before ``max_wall_s`` is reached, or None."""
        self.turns_started += 1
        return None if self.max_wall_s is None else max(0.0, self.max_wall_s - self.wall_s_used)

    def end_turn(self, ran_s: float, cost_usd: float) -> str | None:
        """A turn ended after ``ran_s``; the limit this exhausted just now, if any."""
        self.wall_s_used += ran_s
        if self.exhausted is not None:
            return None
        for name, used in (("max_cost_usd", cost_usd), ("max_wall_s", self.wall_s_used),
                           ("max_turns", self.turns_started)):
            limit = self.limit_of(name)
            if limit is not None and used >= limit:
                self.exhausted = name
                return name
        return None

    def limit_of(self, name: str) -> Any:
        return getattr(self, name)

    def record(self) -> dict[str, Any]:
        return {"turns_started": self.turns_started, "wall_s_used": self.wall_s_used, "exhausted": self.exhausted}

    def summary(self, cost_usd: float | None) -> dict[str, Any] | None:
        if all(self.limit_of(name) is None for name in LIMITS):
            return None
        return {**{name: self.limit_of(name) for name in LIMITS}, "turns_started": self.turns_started,
                "wall_s_used": round(self.wall_s_used, 3), "cost_usd": cost_usd, "exhausted": self.exhausted}
