"""Simulator settings and the live counters served at GET /simulator/stats."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAULT_MODES = ("none", "error", "hang")


def check_fault(mode: str, status: int) -> str | None:
    """What is wrong with a fault setting, or None; shared by the CLI, settings and endpoint."""
    if mode not in FAULT_MODES:
        return f"fault mode must be one of {', '.join(FAULT_MODES)}, not {mode!r}"
    if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
        return f"fault status must be a whole number 500..599, not {status!r}"
    return None


@dataclass
class SimulatorSettings:
    tokens: int = 24  # tokens per answer unless options.num_predict / sim_tokens says otherwise
    token_delay_ms: float = 10.0  # delay between tokens
    first_token_delay_ms: float = 50.0
    models: tuple[str, ...] = ("llama3.2:latest",)
    version: str = "0.33.0"
    # Names /api/pull can fetch; None means any valid name (the registry has everything).
    registry: tuple[str, ...] | None = None
    # Fault at start (faults.py; live changes go through POST /simulator/fault): "none",
    # "error" (every Ollama call answered with fault_status) or "hang" (never answered).
    fault: str = "none"
    fault_status: int = 500

    def __post_init__(self) -> None:
        problem = check_fault(self.fault, self.fault_status)
        if problem is not None:
            raise ValueError(problem)


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
    # "METHOD /route" (e.g. "HEAD /api/blobs/{digest}"), so one route is one key.
    by_endpoint: dict[str, int] = field(default_factory=dict)
    embed_inputs: int = 0  # texts that reached /api/embed or /api/embeddings
    # Texts per embed request, oldest first (the last 1000 requests).
    embed_batches: deque[int] = field(default_factory=lambda: deque(maxlen=1000))

    def count_request(self, path: str, endpoint: str | None = None) -> None:
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        if endpoint is not None:
            self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1

    def count_embed(self, inputs: int) -> None:
        self.embed_inputs += inputs
        self.embed_batches.append(inputs)

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
        self.by_endpoint = {}
        self.embed_inputs = 0
        self.embed_batches.clear()

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
            "by_endpoint": dict(self.by_endpoint),
            "embed_inputs": self.embed_inputs,
            "embed_batches": list(self.embed_batches),
        }


SIM_STATS: web.AppKey[SimulatorStats] = web.AppKey("sim_stats", SimulatorStats)
