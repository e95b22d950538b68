"""Per-app server state: configured models, their metadata and which ones are loaded."""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from server.simulator.settings import SimulatorSettings, SimulatorStats
from server.simulator.validation import _FOREVER_NS, _int_option

_DEFAULT_KEEP_ALIVE_S = 300.0


@dataclass
class _Loaded:
    name: str
    expires_ns: int
    context_length: int


@dataclass
class _SimState:
    settings: SimulatorSettings
    stats: SimulatorStats
    started_ns: int = field(default_factory=time.time_ns)
    loaded: dict[str, _Loaded] = field(default_factory=dict)

    def resolve_model(self, name: str) -> str | None:
        if name in self.settings.models:
            return name
        if ":" not in name and f"{name}:latest" in self.settings.models:
            return f"{name}:latest"
        return None

    def mark_loaded(self, name: str, keep_alive: float | None, options: dict[str, Any]) -> None:
        if keep_alive == 0:
            self.loaded.pop(name, None)
            return
        seconds = _DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive
        now = time.time_ns()
        expires = now + _FOREVER_NS if math.isinf(seconds) else now + int(seconds * 1e9)
        previous = self.loaded.get(name)
        context_length = _int_option(options, "num_ctx") or (
            previous.context_length if previous else 4096
        )
        self.loaded[name] = _Loaded(name, expires, context_length)

    def model_info(self, name: str) -> dict[str, Any]:
        digest = hashlib.sha256(name.encode()).hexdigest()
        base, _, tag = name.partition(":")
        family_match = re.match(r"[a-z]+[0-9]*", base.lower())
        family = family_match.group(0) if family_match else "llama"
        size_match = re.search(r"(\d+(?:\.\d+)?)b", tag.lower())
        billions = float(size_match.group(1)) if size_match else 1 + int(digest[:2], 16) / 32
        size = int(billions * 0.6e9) + int(digest[2:8], 16)
        return {
            "digest": digest,
            "size": size,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": f"{billions:.1f}B",
                "quantization_level": "Q4_K_M",
            },
        }


_STATE: web.AppKey[_SimState] = web.AppKey("sim_state", _SimState)
