"""The dashboard window: an Overview tab with the banner, tiles, the per-endpoint, per-model and
per-user breakdown, charts, the recent requests, live queue, per-model and hosts tables, and the
log tail, rendering the once-a-second snapshot into them, and a Settings tab. It never calls
services; it emits signals."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QColor,
    QFont,
    QKeyEvent,
    QKeySequence,
    QPalette,
    QShortcut,
)
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.dashboard import formatting as fmt
from app.dashboard.banner import StateBanner
from app.dashboard.breakdown import Breakdown
from app.dashboard.charts import ChartPanel
from app.dashboard.colors import BAD, GOOD, text_tone
from app.dashboard.hosts_view import HostsView, tile_view, valid_hosts
from app.dashboard.keyed_rows import read_only_table
from app.dashboard.log_tail import LogView
from app.dashboard.models_view import ModelsView
from app.dashboard.queue_view import QueueView
from app.dashboard.quit_banner import QuitBanner
from app.dashboard.requests_model import ANONYMOUS, COLUMNS, RequestsModel
from app.dashboard.tiles import Tile, tier_summary
from app.settings import SettingsPage

log = logging.getLogger("chatbot.ui")

TILES: dict[str, tuple[str, str]] = {
    "hit_rate": ("Hit rate", "Share of cache lookups answered from RAM since the server started"),
    "cache": ("Cache", "Cached responses and their size against the configured maximum"),
    "queue": ("Queue", "Requests waiting for a generation slot, and slots in use"),
    "memory": ("Memory", "Resident memory (RSS) of this process: server and dashboard"),
    "requests": ("Requests", "Requests answered per second over the last few seconds"),
    "ollama": ("Ollama", "Whether Ollama answers, the configured model and its latency"),
}
FLUSHABLE_STATES = frozenset({"serving", "ollama_down"})
# The widest text a fixed-width column of the requests table must fit (else its header); a
# longer user name is elided, and the row's tooltip has it in full.
COLUMN_SAMPLES = {
    "Time": "00:00:00",
    "Endpoint": "chat-optimized",
    "User": "anonymous",
    "Status": "ollama_unavailable",
}


def _cache_summary(cache: Mapping[str, Any]) -> str:
    """`3 cached responses (1.2 MB)`, or "" while the cache is off."""
    if not cache.get("enabled", True):
        return ""
    entries = fmt.count(int(cache.get("entries", 0)), "cached response")
    return f"{entries} ({fmt.megabytes(float(cache.get('size_bytes', 0)) / 2**20)} MB)"


def _section(title: str, body: QWidget) -> QWidget:
    """A small muted caption above a widget."""
    caption = QLabel(title.upper())
    font = QFont(caption.font())
    font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
    font.setWeight(QFont.Weight.DemiBold)
    caption.setFont(font)
    caption.setForegroundRole(QPalette.ColorRole.PlaceholderText)
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    layout.addWidget(caption)
    layout.addWidget(body, 1)
    return box


class DashboardWindow(QMainWindow):
    flush_requested = Signal()
    restart_requested = Signal()
    close_requested = Signal()
    quit_now_requested = Signal()
    cancel_requested = Signal(str)  # a request id, from the live queue

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Chatbot Companion")
        self.setMinimumSize(880, 600)
        self.resize(1000, 720)
        self._close_quits = False
        self._cache_summary = ""
        self.confirm_dialog: QMessageBox | None = None
        # The cache's figures now, for the flush dialog (the last snapshot may be a second old).
        self.cache_figures: Callable[[], Mapping[str, Any]] | None = None
        self.quit_banner = QuitBanner()
        self.quit_banner.quit_now.connect(self.quit_now_requested.emit)

        self.banner = StateBanner()
        self.flush_button = QPushButton("Flush Cache")
        self.flush_button.setToolTip("Drop every cached response (asks first)")
        self.restart_button = QPushButton("Restart Server")
        self.restart_button.setToolTip(
            "Rebind the HTTP server; answers in progress get 10 s to finish, the cache and the "
            "queue are kept"
        )
        self.flush_button.clicked.connect(self._ask_flush)
        self.restart_button.clicked.connect(self._on_restart)

        self.tiles: dict[str, Tile] = {key: Tile(*spec) for key, spec in TILES.items()}
        self.breakdown = Breakdown()
        self._render_users(None)  # until a snapshot names someone
        # The charts and their range picker; what they plot is the controller's history.
        self.chart_panel = ChartPanel()
        self.charts = self.chart_panel.charts
        self.requests_model = RequestsModel()
        self.requests_model.set_palette(self.palette())
        self.requests_table = self._make_table()
        self.queue_view = QueueView()
        self.queue_view.cancel_requested.connect(self.cancel_requested)
        self.models_view = ModelsView()
        self.hosts_view = HostsView()
        # The recent requests, the live queue and the per-model table share one place: at the
        # minimum size (880×600) there is no height for three tables at once.
        self.activity = QTabWidget()
        self.log_view = LogView()
        self.log_tail = self.log_view.tail
        self.status_label = QLabel()
        self.status_label.setContentsMargins(8, 0, 0, 0)
        self.settings = SettingsPage()
        self.tabs = QTabWidget()

        self._build_layout()
        self._add_shortcuts()
        self.tiles["ollama"].keep_sub_tail()  # the URL, whole where it fits
        self.set_state("starting", "Starting the server…")

    # -- construction -----------------------------------------------------------------------

    def _make_table(self) -> QTableView:
        table = QTableView()
        table.setModel(self.requests_model)
        read_only_table(table)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        # Model names vary most in length: that column takes the spare width. Other widths come
        # from the font rather than ResizeToContents, which would re-measure every cell on each
        # update.
        header.setStretchLastSection(False)
        header.setSectionResizeMode(COLUMNS.index("Model"), QHeaderView.ResizeMode.Stretch)
        metrics = table.fontMetrics()
        for col, name in enumerate(COLUMNS):
            if name != "Model":
                sample = COLUMN_SAMPLES.get(name, name)
                header.resizeSection(col, metrics.horizontalAdvance(sample) + 28)
        return table

    def _build_layout(self) -> None:
        top = QHBoxLayout()
        top.setSpacing(8)
        top.addWidget(self.banner, 1)
        top.addWidget(self.flush_button, 0, Qt.AlignmentFlag.AlignVCenter)
        top.addWidget(self.restart_button, 0, Qt.AlignmentFlag.AlignVCenter)

        tiles = QHBoxLayout()
        tiles.setSpacing(8)
        for tile in self.tiles.values():
            tiles.addWidget(tile)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        self.activity.setDocumentMode(True)
        self.activity.addTab(self.requests_table, "Recent requests")
        self.activity.addTab(self.queue_view, "Live queue")
        self.activity.addTab(self.models_view, "Models")
        self.activity.addTab(self.hosts_view, "Hosts")
        self.activity.setTabToolTip(
            self.activity.indexOf(self.queue_view),
            "Requests being answered and waiting now; cancel them here",
        )
        self.activity.setTabToolTip(
            self.activity.indexOf(self.models_view),
            "Requests, hit rate and generation time per model, and what Ollama has installed",
        )
        self.activity.setTabToolTip(
            self.activity.indexOf(self.hosts_view),
            "The Ollama hosts behind the gateway: up or down, load, models installed and loaded",
        )
        splitter.addWidget(self.activity)
        splitter.addWidget(_section("Log", self.log_view))
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)

        overview = QWidget()
        layout = QVBoxLayout(overview)
        layout.setContentsMargins(12, 12, 12, 6)
        layout.setSpacing(10)
        layout.addWidget(self.quit_banner)
        layout.addLayout(top)
        layout.addLayout(tiles)
        layout.addWidget(self.breakdown)
        layout.addWidget(self.chart_panel, 1)
        layout.addWidget(splitter, 4)
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(overview, "Overview")
        self.tabs.addTab(self.settings, "Settings")
        self.settings.dirty_changed.connect(self._on_settings_dirty)
        self.setCentralWidget(self.tabs)
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().setSizeGripEnabled(False)

    # -- public interface -------------------------------------------------------------------

    def update_snapshot(self, snap: Mapping[str, Any]) -> None:
        """Render one stats snapshot. Cheap: label texts, three deque appends, new table rows."""
        cache = snap.get("response_cache") or {}
        queue = snap.get("queue") or {}
        ollama = snap.get("ollama") or {}
        rss = float((snap.get("memory") or {}).get("rss_mb", 0.0))
        hit_rate = float(cache.get("hit_rate", 0.0))
        waiting, active = int(queue.get("waiting", 0)), int(queue.get("active", 0))

        self.tiles["hit_rate"].set_values(
            fmt.percent(hit_rate),
            f"{cache.get('hits', 0):,} hits · {cache.get('misses', 0):,} misses",
        )
        size_mb = float(cache.get("size_bytes", 0)) / 2**20
        if cache.get("enabled", True):
            entries = int(cache.get("entries", 0))
            max_mb = cache.get("max_size_mb", 0)
            tiers, tiers_detail, tiers_tone = tier_summary(cache.get("tiers"))
            self.tiles["cache"].set_values(
                fmt.count(entries, "entry", "entries"),
                f"{fmt.megabytes(size_mb)} of {max_mb} MB{tiers}",
                tiers_tone,
                detail=tiers_detail,
            )
            self._cache_summary = (
                f"{fmt.count(entries, 'cached response')} ({fmt.megabytes(size_mb)} MB)"
            )
        else:
            self.tiles["cache"].set_values("off", "response cache disabled")
            self._cache_summary = ""
        self.tiles["queue"].set_values(
            f"{waiting:,} waiting", f"{active} active of {queue.get('max_concurrent', 0)}"
        )
        self.tiles["memory"].set_values(f"{rss:,.0f} MB RSS", "this process")
        self.tiles["requests"].set_values(
            fmt.per_second(float(snap.get("requests_per_s", 0.0))),
            # Requests answered on every endpoint (hits included), and failed generations.
            f"{snap.get('requests_total', 0):,} total · {queue.get('failed', 0):,} failed",
        )
        self._render_ollama(ollama, valid_hosts(snap.get("hosts")))
        self.breakdown.set_counts("endpoints", snap.get("endpoints"))
        self.breakdown.set_counts("models", snap.get("models"))
        self._render_users(snap.get("users"))

        self.chart_panel.update_snapshot(snap)
        self._render_recent(snap.get("recent") or [])
        self._render_queue(snap)
        self._render_hosts(snap.get("hosts"))
        self.models_view.set_models(
            snap.get("models"),
            snap.get("ollama_models"),
            ollama.get("model"),
            snap.get("model_generation_ms"),
        )
        self._render_status(snap, queue, ollama)

    def set_state(self, state: str, message: str) -> None:
        self.banner.set_state(state, message)
        self.flush_button.setEnabled(state in FLUSHABLE_STATES)
        self.restart_button.setEnabled(state != "starting")

    def set_quitting(self, answers: int) -> None:
        """Quit waits for `answers` answers in progress (0: no longer): the strip says so and
        offers Quit now; Flush and Restart make no sense meanwhile."""
        self.quit_banner.set_answers(answers)
        if answers:
            self.flush_button.setEnabled(False)
            self.restart_button.setEnabled(False)

    def append_log(self, line: str) -> None:
        self.log_tail.append_line(line)

    def set_close_quits(self, quits: bool) -> None:
        self._close_quits = quits

    def show_settings(self) -> None:
        self.tabs.setCurrentWidget(self.settings)

    # -- rendering helpers ------------------------------------------------------------------

    def _render_ollama(
        self, ollama: Mapping[str, Any], hosts: list[Mapping[str, Any]] | None = None
    ) -> None:
        model = str(ollama.get("model") or "no model")
        several = tile_view(hosts or [])
        if several is not None:
            # Several hosts: how many are up, each one in the tooltip; the latency is the
            # first host up's, as `ollama` reports it.
            latency = ollama.get("latency_ms") if ollama.get("reachable") else None
            sub = f"{model} · {fmt.millis(latency)} ms" if latency is not None else model
            self.tiles["ollama"].set_values(several.value, sub, several.tone, detail=several.detail)
            return
        full_url = f"Ollama at {ollama['url']}" if ollama.get("url") else ""
        if ollama.get("reachable"):
            latency = ollama.get("latency_ms")
            sub = f"{model} · {fmt.millis(latency)} ms" if latency is not None else model
            self.tiles["ollama"].set_values("reachable", sub, GOOD, detail=full_url)
        else:
            url = str(ollama.get("url", "")).removeprefix("http://").removeprefix("https://")
            self.tiles["ollama"].set_values(
                "unreachable", f"{model} · {url}" if url else model, BAD, detail=full_url
            )

    def _render_users(self, users: Any) -> None:
        # Without keys or a user header everyone is "anonymous", and an older server sends no
        # users at all: a line saying so would tell nothing, so it shows only with names.
        named = isinstance(users, Mapping) and any(name != ANONYMOUS for name in users)
        self.breakdown.set_line_visible("users", named)
        if named:
            self.breakdown.set_counts("users", users)

    def _render_recent(self, recent: list[Mapping[str, Any]]) -> None:
        bar = self.requests_table.verticalScrollBar()
        scrolled = bar.value()
        inserted = self.requests_model.update(recent)
        # A user reading older rows keeps them in view while new ones arrive above.
        if inserted > 0 and scrolled > 0:
            # The scroll range grows in a deferred layout; grow it now so setValue isn't clamped.
            self.requests_table.updateGeometries()
            bar.setValue(scrolled + inserted)

    def _render_queue(self, snap: Mapping[str, Any]) -> None:
        self.queue_view.set_entries(snap.get("queue_entries"), bool(snap.get("named_users")))
        total = self.queue_view.total
        title = f"Live queue ({total:,})" if total else "Live queue"
        index = self.activity.indexOf(self.queue_view)
        if self.activity.tabText(index) != title:
            self.activity.setTabText(index, title)

    def _render_hosts(self, hosts: Any) -> None:
        self.hosts_view.set_hosts(hosts)
        title = self.hosts_view.summary.title
        index = self.activity.indexOf(self.hosts_view)
        if self.activity.tabText(index) != title:
            self.activity.setTabText(index, title)
        self._tone_hosts_tab()

    def _tone_hosts_tab(self) -> None:
        """The Hosts tab's title in the warning colour while a host is down (legible on this
        palette; an invalid colour gives the tab bar's own text colour back)."""
        tone = self.hosts_view.summary.tone
        color = text_tone(tone, self.palette()) if tone else QColor()
        bar = self.activity.tabBar()
        index = self.activity.indexOf(self.hosts_view)
        if bar.tabTextColor(index) != color:
            bar.setTabTextColor(index, color)

    def _render_status(
        self, snap: Mapping[str, Any], queue: Mapping[str, Any], ollama: Mapping[str, Any]
    ) -> None:
        parts = [f"Up {fmt.duration(float(snap.get('uptime_seconds', 0.0)))}"]
        if snap.get("api_url"):
            parts.append(f"API {snap['api_url']}")
        parts.append(
            f"avg wait {fmt.millis(queue.get('avg_wait_ms', 0.0))} ms, "
            f"generation {fmt.millis(queue.get('avg_generation_ms', 0.0))} ms"
        )
        ended = f"{queue.get('rejected', 0):,} rejected, {queue.get('cancelled', 0):,} cancelled"
        if queue.get("interrupted"):  # ended by Restart or Quit, not by their clients
            ended += f", {queue['interrupted']:,} cut by a restart"
        parts.append(ended)
        # The version is the last one Ollama told: shown only while it answers.
        if not ollama.get("reachable"):
            parts.append("Ollama unreachable")
        elif ollama.get("version"):
            parts.append(f"Ollama {ollama['version']}")
        text = "  ·  ".join(parts)
        if self.status_label.text() != text:
            self.status_label.setText(text)

    def _on_settings_dirty(self, dirty: bool) -> None:
        index = self.tabs.indexOf(self.settings)
        self.tabs.setTabText(index, "Settings •" if dirty else "Settings")
        self.tabs.setTabToolTip(index, "Unsaved changes" if dirty else "")

    # -- actions ----------------------------------------------------------------------------

    def _add_shortcuts(self) -> None:
        # Esc is handled in keyPressEvent, so a child using it (the log's find bar) goes first.
        for keys, slot in (
            ("Ctrl+W", self.close),  # hides (with a tray), or quits as the window's close does
            ("Ctrl+Q", self._quit),
            ("Ctrl+F", self.find_in_log),
        ):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.activated.connect(slot)

    def find_in_log(self) -> None:
        self.tabs.setCurrentIndex(0)  # the Overview, where the log is
        self.log_view.open_find()

    def _quit(self) -> None:
        log.info("quit requested from the dashboard (Ctrl+Q)")
        # The companion quits on close_requested, as on the tray menu's Quit.
        self.close_requested.emit()

    def _on_restart(self) -> None:
        log.info("restart requested from the dashboard")
        self.restart_requested.emit()

    def ask_flush(self) -> None:
        """Ask before flushing (the button, and the tray's Flush Cache): flush_requested on OK."""
        self._ask_flush()

    def _ask_flush(self) -> None:
        if self.confirm_dialog is not None:
            self.confirm_dialog.raise_()
            self.confirm_dialog.activateWindow()
            return
        buttons = QMessageBox.StandardButton.Ok | QMessageBox.StandardButton.Cancel
        # Qt appends the app's name to any other title ("Flush cache — Chatbot Companion", cut
        # off in a box this narrow; seen with xprop under Xvfb): the app's name alone, and the
        # question in the body.
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Chatbot Companion",
            "Flush the response cache?",
            buttons,
            self,
        )
        what = self._cache_summary or "every cached response"
        if self.cache_figures is not None:
            what = _cache_summary(self.cache_figures()) or "every cached response"
        box.setInformativeText(f"This drops {what}. Hit and miss counters are kept.")
        box.button(QMessageBox.StandardButton.Ok).setText("Flush Cache")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setEscapeButton(QMessageBox.StandardButton.Cancel)
        box.finished.connect(self._on_flush_answer)
        self.confirm_dialog = box
        # open(), never exec(): a nested loop would stall the server sharing this event loop.
        box.open()

    def _on_flush_answer(self, result: int) -> None:
        box, self.confirm_dialog = self.confirm_dialog, None
        if box is None:
            return
        clicked = box.clickedButton()
        if clicked is not None:
            confirmed = box.standardButton(clicked) == QMessageBox.StandardButton.Ok
        else:  # closed programmatically: accept() / reject()
            confirmed = result == QDialog.DialogCode.Accepted
        box.deleteLater()
        if confirmed:
            log.info("cache flush confirmed from the dashboard")
            self.flush_requested.emit()

    # -- events -----------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.confirm_dialog is not None:
            self.confirm_dialog.reject()
        # A new API key on show must not outlive the window it was made in.
        self.settings.close_dialogs()
        if self._close_quits:
            event.accept()
            self.close_requested.emit()
        else:
            # Ignore and hide, so Qt never sees a "last window closed" while the tray lives on.
            event.ignore()
            self.hide()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # Esc hides the window when the tray lives on; without a tray the window is the app,
        # and a stray Esc must not quit it (Ctrl+W and the close button still do).
        if event.key() == Qt.Key.Key_Escape and not self._close_quits:
            self.close()
            return
        super().keyPressEvent(event)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self.requests_model.set_palette(self.palette())
            self.queue_view.palette_changed(self.palette())
            self.models_view.palette_changed(self.palette())
            self.hosts_view.palette_changed(self.palette())
            self._tone_hosts_tab()
        super().changeEvent(event)
