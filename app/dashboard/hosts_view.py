"""The Ollama hosts behind the gateway, one row each (URL, state, load, weight, models installed
and loaded; while down, why and when it is tried again), and the summaries of them that the tab
title and the Ollama tile show."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QHeaderView, QTableView, QWidget

from app.dashboard import formatting as fmt
from app.dashboard.colors import BAD, GOOD, WARN
from app.dashboard.keyed_rows import KeyedRowsModel, Row, read_only_table

COLUMNS = ("Host", "State", "Running", "Weight", "Models", "Loaded", "Last error")
NUMERIC = ("Running", "Weight")
HEADER_TIPS = {
    "Host": "The Ollama server's base URL ([[ollama.hosts]], or [ollama].api_url alone)",
    "State": "up: in rotation; down: left out after a failed probe or request, and probed "
    "again with backoff (1 s, 2 s, 4 s … up to 30 s) until it answers; unknown: not probed yet",
    "Running": "Generations and embeddings running on this host, of its max_concurrent",
    "Weight": "Breaks ties between equally busy hosts: the larger weight is picked first",
    "Models": "Models installed (GET /api/tags at each probe); their names are in the tooltip",
    "Loaded": "Models in memory now (GET /api/ps at each probe); a request goes to a host that "
    "has its model loaded first",
    "Last error": "Why the host is down",
}
# The widest text a fixed-width column must fit (else its header).
SAMPLES = {
    "Host": "http://192.168.100.100:11434",
    "State": "down · next try in 30 s",
    "Running": "Running",
    "Weight": "Weight",
    "Models": "Models",
    "Loaded": "llama3.2:latest, qwen3",
}
STATE_TONES = {"up": "good", "down": "bad", "unknown": "muted"}


def _names(value: Any) -> list[str]:
    return [str(n) for n in value] if isinstance(value, list) else []


def next_try(host: Mapping[str, Any]) -> str:
    """When a down host is probed again: 'next try in 4 s', or 'trying now'."""
    wait = float(host.get("next_probe_in_s") or 0.0)
    if wait <= 0:
        return "trying now"
    # Rounded up: "in 0 s" would read as over while the probe is still to come.
    return f"next try in {fmt.duration(math.ceil(wait))}"


def state_text(host: Mapping[str, Any]) -> str:
    state = str(host.get("state") or "unknown")
    return f"down · {next_try(host)}" if state == "down" else state


def host_line(host: Mapping[str, Any]) -> str:
    """One host in a sentence, for tooltips: 'http://a:11434: up, 1 of 2 running, 3 models'."""
    url, state = str(host.get("url", "")), str(host.get("state") or "unknown")
    if state == "down":
        error = str(host.get("last_error") or "")
        why = f" ({error})" if error else ""
        return f"{url}: down{why}, {next_try(host)}"
    if state != "up":
        return f"{url}: not probed yet"
    models = _names(host.get("models"))
    return (
        f"{url}: up, {host.get('running', 0)} of {host.get('max_concurrent', 0)} running, "
        f"{fmt.count(len(models), 'model')}"
    )


def make_row(host: Mapping[str, Any]) -> Row:
    url = str(host.get("url", ""))
    state = str(host.get("state") or "unknown")
    models, loaded = _names(host.get("models")), _names(host.get("loaded"))
    error = str(host.get("last_error") or "") if state != "up" else ""
    # The URL is in the first column already: the cell keeps its width for the reason (the
    # tooltip has the message whole).
    error = error.replace(f" at {url}", "")
    weight = host.get("weight", 1.0)
    cells = (
        url,
        state_text(host),
        f"{int(host.get('running', 0)):,} of {int(host.get('max_concurrent', 0)):,}",
        f"{float(weight):g}" if isinstance(weight, int | float) else fmt.DASH,
        f"{len(models):,}",
        ", ".join(loaded) if loaded else "none",
        error or fmt.DASH,
    )
    tones = ("", STATE_TONES.get(state, ""), "", "", "", "" if loaded else "muted", "muted")
    # While a host is down its lists are the last ones it gave: say so rather than hide them.
    known = " (when last reached)" if state == "down" and models else ""
    lines = [host_line(host), f"Installed{known}: " + (", ".join(models) or "none")]
    lines.append("Loaded: " + (", ".join(loaded) or "none"))
    return Row(url, cells, "\n".join(lines), tones)


class Summary(NamedTuple):
    """How many hosts are up, of how many, and whether any is down."""

    up: int
    total: int
    down: int

    @property
    def title(self) -> str:
        """The tab's title: 'Hosts (2/3)'."""
        return f"Hosts ({self.up}/{self.total})" if self.total else "Hosts"

    @property
    def tone(self) -> str | None:
        """WARN while some host is down (the others still serve), BAD when none is up."""
        if not self.down:
            return None
        return BAD if not self.up else WARN


def summary(hosts: Sequence[Mapping[str, Any]]) -> Summary:
    states = [str(h.get("state") or "unknown") for h in hosts]
    return Summary(states.count("up"), len(states), states.count("down"))


def valid_hosts(value: Any) -> list[Mapping[str, Any]]:
    """The snapshot's `hosts`, each a mapping; [] when it has none (an older server)."""
    return [h for h in value if isinstance(h, Mapping)] if isinstance(value, list) else []


class TileView(NamedTuple):
    value: str
    tone: str | None
    detail: str


def tile_view(hosts: Sequence[Mapping[str, Any]]) -> TileView | None:
    """The Ollama tile's headline with several hosts ('2 of 3 hosts up', its tone) and the
    tooltip listing them; None with one host, whose tile stays as it always was."""
    if len(hosts) < 2:
        return None
    s = summary(hosts)
    value = f"{s.up} of {s.total} hosts up"
    # Hosts not probed yet (the first second after a start) are no news: no colour until known.
    tone = s.tone or (GOOD if s.up == s.total else None)
    return TileView(value, tone, "\n".join(host_line(h) for h in hosts))


class HostsView(QTableView):
    """`set_hosts(snapshot["hosts"])` once a second; rows keep their selection (keyed by URL)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # A count centred, so it does not run into the model names left-aligned next to it.
        self.table_model = KeyedRowsModel(
            COLUMNS, NUMERIC, HEADER_TIPS, centered=("State", "Models")
        )
        self.summary = Summary(0, 0, 0)
        self.setModel(self.table_model)
        read_only_table(self)
        header = self.horizontalHeader()
        header.setStretchLastSection(True)  # the last error, when there is one, takes the rest
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        metrics = self.fontMetrics()
        for col, name in enumerate(COLUMNS):
            if name in SAMPLES:
                header.resizeSection(col, metrics.horizontalAdvance(SAMPLES[name]) + 24)

    def set_hosts(self, hosts: Any) -> None:
        valid = valid_hosts(hosts)
        self.summary = summary(valid)
        self.table_model.sync([make_row(h) for h in valid])

    def selected_url(self) -> str | None:
        rows = self.selectionModel().selectedRows()
        return self.table_model.key(rows[0].row()) if rows else None

    def select(self, url: str) -> None:
        row = self.table_model.row_of(url)
        if row >= 0:
            self.selectRow(row)

    def palette_changed(self, palette: QPalette) -> None:
        self.table_model.set_palette(palette)
