"""Per-model figures: requests, hit rate and average generation time for each model, and whether
Ollama has it installed and loaded now; models Ollama has (and the configured one) that saw no
requests are listed too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QHeaderView, QTableView, QWidget

from app.dashboard import formatting as fmt
from app.dashboard.breakdown import OTHER, Share, shares
from app.dashboard.keyed_rows import KeyedRowsModel, Row, read_only_table
from server.services.cache import normalize_model

COLUMNS = ("Model", "Requests", "Hit rate", "Avg generation (ms)", "Installed", "Loaded")
NUMERIC = ("Requests", "Hit rate", "Avg generation (ms)")
HEADER_TIPS = {
    "Requests": "Requests for this model since the server started",
    "Hit rate": "Share of those requests answered from the cache",
    "Avg generation (ms)": "Average time Ollama took to generate an answer for this model "
    "(cache misses that completed, without their wait in line)",
    "Installed": "Whether Ollama has the model (GET /api/tags, asked every 10 s)",
    "Loaded": "Whether Ollama has the model in memory now (GET /api/ps, asked every 10 s)",
}
UNKNOWN = "unknown"


def _names(value: Any) -> set[str] | None:
    return {str(n) for n in value} if isinstance(value, list) else None


def make_rows(
    counts: Mapping[str, Any] | None,
    ollama: Mapping[str, Any] | None,
    configured: str = "",
    generation_ms: Mapping[str, Any] | None = None,
) -> list[Row]:
    """Rows from the snapshot's per-model counts and the controller's `ollama_models`: the
    busiest first, then the models Ollama has and the configured one that saw no requests, by
    name; the gateway's bucket for names past the first 50 last. `generation_ms` is the
    average generation time per model."""
    counts = counts or {}
    installed = _names((ollama or {}).get("installed"))
    loaded = _names((ollama or {}).get("loaded"))
    why = str((ollama or {}).get("error") or "Ollama has not been asked yet")
    ranked = [s for s in shares(counts) if s.name != OTHER]
    seen = {s.name for s in ranked}
    extra = {normalize_model(configured)} if configured.strip() else set()
    idle = sorted(((installed or set()) | (loaded or set()) | extra) - seen)
    ranked += [Share(name, 0, 0) for name in idle]
    ranked += [s for s in shares(counts) if s.name == OTHER]
    rows = []
    for share in ranked:
        gen_ms = (generation_ms or {}).get(share.name)
        other = share.name == OTHER
        name = "models past the first 50" if other else share.name
        has = UNKNOWN if installed is None else "yes" if share.name in installed else "no"
        up = UNKNOWN if loaded is None else "loaded" if share.name in loaded else "no"
        if other:
            has = up = fmt.DASH
        cells = (
            name,
            f"{share.requests:,}",
            fmt.percent(share.hits / share.requests) if share.requests else fmt.DASH,
            fmt.millis(float(gen_ms)) if isinstance(gen_ms, int | float) else fmt.DASH,
            has,
            up,
        )
        # A model that gets requests but is not installed: those requests fail.
        has_tone = "bad" if has == "no" and share.requests else "muted" if has == UNKNOWN else ""
        up_tone = "good" if up == "loaded" else "muted"
        tones = ("muted" if other else "", "", "", "", has_tone, up_tone)
        tip = name
        if UNKNOWN in (has, up):
            tip += f"\nInstalled and loaded are unknown: {why}"
        rows.append(Row(share.name, cells, tip, tones))
    return rows


class ModelsView(QTableView):
    """`set_models(snapshot["models"], snapshot["ollama_models"])` once a second."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # Yes/no columns centred, so they do not run into the right-aligned figures.
        self.table_model = KeyedRowsModel(
            COLUMNS, NUMERIC, HEADER_TIPS, centered=("Installed", "Loaded")
        )
        self.setModel(self.table_model)
        read_only_table(self)
        header = self.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        metrics = self.fontMetrics()
        for col, name in enumerate(COLUMNS[1:], start=1):
            header.resizeSection(col, metrics.horizontalAdvance(name) + 28)

    def set_models(
        self, counts: Any, ollama: Any, configured: Any = "", generation_ms: Any = None
    ) -> None:
        self.table_model.sync(
            make_rows(
                counts if isinstance(counts, Mapping) else None,
                ollama if isinstance(ollama, Mapping) else None,
                configured if isinstance(configured, str) else "",
                generation_ms if isinstance(generation_ms, Mapping) else None,
            )
        )

    def palette_changed(self, palette: QPalette) -> None:
        self.table_model.set_palette(palette)
