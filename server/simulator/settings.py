"""Simulator settings and the live counters served at GET /simulator/stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SimulatorSettings:
    tokens: int = 24  # tokens per answer unless options.num_predict / sim_tokens says otherwise
    token_delay_ms: float = 10.0  # delay between tokens
    first_token_delay_ms: float = 50.0
    models: tuple[str, ...] = ("llama3.2:latest",)
    version: str = "0.33.0"


@dataclass
class SimulatorStats:
    """Live counters served at GET /simulator/stats.

    Every generation that started ends in exactly one of completed, cancelled (client went
    away) or failed (sim_error_after), so generations == completed + cancelled + failed +
    in_progress as long as no reset happened in between.
    """

    requests: int = 0
    generations: int = 0
    completed: int = 0
    in_progress: int = 0
    max_in_progress: int = 0
    cancelled: int = 0
    failed: int = 0
    by_path: dict[str, int] = field(default_factory=dict)

    def count_request(self, path: str) -> None:
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1

    def generation_started(self) -> None:
        self.generations += 1
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)

    def generation_ended(self, outcome: str) -> None:
        self.in_progress -= 1
        if outcome == "completed":
            self.completed += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1

    def reset(self) -> None:
        # in_progress describes live handlers, not history: zeroing it would make it go
        # negative when those handlers finish.
        self.requests = self.generations = self.completed = 0
        self.cancelled = self.failed = 0
        self.max_in_progress = self.in_progress
        self.by_path = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "generations": self.generations,
            "completed": self.completed,
            "in_progress": self.in_progress,
            "max_in_progress": self.max_in_progress,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "by_path": dict(self.by_path),
        }


SIM_STATS: web.AppKey[SimulatorStats] = web.AppKey("sim_stats", SimulatorStats)
