"""Per-app server state: the local model store, uploaded blobs and which models are loaded."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from server.simulator.catalog import ModelEntry, catalog_entry
from server.simulator.names import ModelName, parse_name
from server.simulator.settings import SimulatorSettings, SimulatorStats
from server.simulator.validation import _FOREVER_NS, _int_option

_DEFAULT_KEEP_ALIVE_S = 300.0
_DEFAULT_NUM_CTX = 4096
_HOUR_NS = 3_600_000_000_000


@dataclass
class _Loaded:
    entry: ModelEntry
    expires_ns: int
    context_length: int


@dataclass
class _SimState:
    settings: SimulatorSettings
    stats: SimulatorStats
    started_ns: int = field(default_factory=time.time_ns)
    models: dict[tuple[str, str, str, str], ModelEntry] = field(default_factory=dict)
    loaded: dict[str, _Loaded] = field(default_factory=dict)
    # Set by the app's cleanup context: a private directory playing OLLAMA_MODELS.
    models_dir: Path | None = None
    blobs: dict[str, int] = field(default_factory=dict)  # uploaded digest -> size

    def __post_init__(self) -> None:
        # Configured order is newest first, so /api/tags' "most recently modified first" keeps it.
        for index, text in enumerate(self.settings.models):
            name = parse_name(text)
            self.models.setdefault(
                name.key, catalog_entry(name, self.started_ns - index * _HOUR_NS)
            )

    # ------------------------------------------------------------------ the local store

    def store(self, entry: ModelEntry) -> None:
        self.models[entry.name.key] = entry

    def remove(self, entry: ModelEntry) -> None:
        self.models.pop(entry.name.key, None)

    def in_registry(self, name: ModelName) -> bool:
        registry = self.settings.registry
        if registry is None:
            return True
        return any(parse_name(known).key == name.key for known in registry)

    def has_layer(self, digest: str) -> bool:
        if digest in self.blobs:
            return True
        return any(
            layer.digest == digest for entry in self.models.values() for layer in entry.layers
        )

    @property
    def models_path(self) -> Path:
        assert self.models_dir is not None, "the app's cleanup context sets models_dir"
        return self.models_dir

    def blob_path(self, digest: str) -> Path:
        return self.models_path / "blobs" / digest.replace(":", "-")

    def manifest_path(self, name: ModelName) -> Path:
        return self.models_path / "manifests" / name.host / name.namespace / name.model / name.tag

    # ------------------------------------------------------------------ loaded models

    def mark_loaded(
        self, entry: ModelEntry, keep_alive: float | None, options: dict[str, Any]
    ) -> None:
        if keep_alive == 0:
            self.loaded.pop(entry.display, None)
            return
        seconds = _DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive
        now = time.time_ns()
        expires = now + _FOREVER_NS if math.isinf(seconds) else now + int(seconds * 1e9)
        previous = self.loaded.get(entry.display)
        context_length = _int_option(options, "num_ctx") or (
            previous.context_length if previous else _DEFAULT_NUM_CTX
        )
        self.loaded[entry.display] = _Loaded(entry, expires, context_length)

    def unload(self, entry: ModelEntry) -> None:
        self.loaded.pop(entry.display, None)

    def live_loaded(self) -> list[_Loaded]:
        """Loaded models, latest expiry first; expired ones are dropped as Ollama's timer would."""
        now = time.time_ns()
        for name in [n for n, item in self.loaded.items() if item.expires_ns <= now]:
            del self.loaded[name]
        return sorted(self.loaded.values(), key=lambda item: item.expires_ns, reverse=True)


_STATE: web.AppKey[_SimState] = web.AppKey("sim_state", _SimState)
