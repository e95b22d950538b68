"""TimingStore: the queue's recent generation times, kept in a small JSON file across restarts.

Without it, the first ETAs after a start use `[queue].estimated_time_per_request_ms` (30 s by
default), which bench/queue.py found off by a factor of a hundred for a fast model. With it, a
restarted gateway starts from the last 20 times it measured. The file is read once when the
gateway starts and written when it stops and once a minute while generations complete, off the
event loop. A missing, unreadable or malformed file is logged and ignored: the queue then falls
back to the configured estimate, as without a file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("chatbot.queue")

FORMAT_VERSION = 1
SAVE_EVERY_S = 60.0


class TimingStore:
    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: keep nothing
        self._saved: tuple[float, ...] = ()

    async def load(self) -> list[float]:
        if self.path is None:
            return []
        samples = await asyncio.to_thread(self._read, self.path)
        self._saved = tuple(samples)
        if samples:
            log.info(
                "ETAs start from %d generation times kept in %s (average %.0f ms)",
                len(samples),
                self.path,
                sum(samples) / len(samples),
            )
        return samples

    async def save(self, samples: Sequence[float]) -> None:
        """Write the samples if they changed since the last load or save."""
        if self.path is None or not samples or tuple(samples) == self._saved:
            return
        self._saved = tuple(samples)
        try:
            await asyncio.to_thread(self._write, self.path, list(self._saved))
        except OSError as exc:
            log.warning("could not keep the generation times in %s: %s", self.path, exc)

    @staticmethod
    def _read(path: Path) -> list[float]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring the generation times in %s: %s", path, exc)
            return []
        samples = data.get("generation_ms") if isinstance(data, dict) else None
        if not isinstance(samples, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in samples
        ):
            log.warning("ignoring %s: generation_ms must be a list of positive numbers", path)
            return []
        return [float(x) for x in samples]

    @staticmethod
    def _write(path: Path, samples: list[float]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        body = {"version": FORMAT_VERSION, "generation_ms": [round(x, 1) for x in samples]}
        tmp.write_text(json.dumps(body), encoding="utf-8")
        os.replace(tmp, path)  # readers never see half a file
