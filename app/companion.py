"""The desktop app assembled: controller, tray, dashboard, one asyncio stop event, the loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import qasync
from PySide6.QtCore import QStandardPaths
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from app.config_manager import ConfigManager, desktop_env
from app.controller import Controller
from app.dashboard import DashboardWindow
from app.icons import app_icon
from app.qt_env import gdk_without_gl
from app.single_instance import SingleInstance
from app.tray import Tray
from server.cli import cli_overrides
from server.config import Loaded
from server.logs import setup_logging

log = logging.getLogger("chatbot.ui")
APP_ID = "chatbot-companion"


class Companion:
    """Wires the controller to the tray and the dashboard; `run()` lives until Quit."""

    def __init__(
        self,
        controller: Controller,
        config_manager: ConfigManager,
        *,
        tray_available: bool | None = None,
        loaded: Loaded | None = None,
    ) -> None:
        self.controller = controller
        self.config_manager = config_manager
        self.stopping = asyncio.Event()
        if tray_available is None:
            tray_available = QSystemTrayIcon.isSystemTrayAvailable()
        self.dashboard = DashboardWindow()
        self.dashboard.setWindowIcon(app_icon())
        self.tray = Tray() if tray_available else None

        c = controller
        c.snapshot_ready.connect(self.dashboard.update_snapshot)
        c.state_changed.connect(self.dashboard.set_state)
        c.log_line.connect(self.dashboard.append_log)
        c.notify.connect(self._notify)
        for line in c.logs.lines:
            self.dashboard.append_log(line)
        self.dashboard.flush_requested.connect(c.flush_cache)
        self.dashboard.restart_requested.connect(c.restart_server)
        # Quit waits for answers in progress: the dashboard and the tray say so, and offer
        # Quit now; the flush dialog reads the cache's figures when it opens.
        c.quitting.connect(self.dashboard.set_quitting)
        c.quitting.connect(self._on_quitting)
        self.dashboard.quit_now_requested.connect(c.quit_now)
        self.dashboard.cache_figures = c.cache_figures
        self.dashboard.cancel_requested.connect(c.cancel_request)
        self.dashboard.close_requested.connect(self.quit)
        if self.tray is not None:
            c.snapshot_ready.connect(self.tray.update_snapshot)
            c.state_changed.connect(self.tray.set_state)
            self.tray.open_dashboard.connect(self.show_dashboard)
            # As from the dashboard: asks first (the same dialog), and the result is notified.
            self.tray.flush_cache.connect(self.dashboard.ask_flush)
            c.quitting.connect(self.tray.set_quitting)
            self.tray.quit_now.connect(c.quit_now)
            self.tray.restart_server.connect(c.restart_server)
            self.tray.copy_api_url.connect(self.copy_api_url)
            self.tray.open_config.connect(self.open_config)
            self.tray.quit.connect(self.quit)
            self.dashboard.set_close_quits(False)
            self.tray.show()
            log.info("tray icon shown")
        else:
            # No system tray (e.g. GNOME without the AppIndicator extension): the dashboard is
            # the main window, and closing it quits, so the app never runs invisible.
            self.dashboard.set_close_quits(True)
            self.dashboard.show()
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.quit)
        self._wire_settings(config_manager, loaded)

    def _wire_settings(self, manager: ConfigManager, loaded: Loaded | None) -> None:
        page = self.dashboard.settings
        manager.form_values.connect(page.load)
        manager.flagged.connect(page.set_flagged)
        manager.sources.connect(page.set_sources)
        manager.raw_toml.connect(page.set_raw_toml)
        manager.status.connect(page.set_status)
        manager.file_problems.connect(page.set_file_problems)
        manager.confirm_replace.connect(page.confirm_replace)
        manager.connection_result.connect(page.show_connection_result)
        manager.models.connect(page.set_models)
        page.save_requested.connect(manager.save)
        page.dirty_changed.connect(manager.form_edited)
        page.replace_requested.connect(lambda values: manager.save(values, replace_broken=True))
        page.test_connection_requested.connect(manager.test_connection)
        page.open_file_requested.connect(manager.open_file)
        manager.attach(self.controller, loaded)
        if loaded is not None and loaded.problems:
            # Start-up with a broken file: say so where the person will look first.
            self.dashboard.show_settings()

    def show_dashboard(self) -> None:
        self.dashboard.showNormal()
        self.dashboard.raise_()
        self.dashboard.activateWindow()

    def copy_api_url(self) -> None:
        QGuiApplication.clipboard().setText(self.controller.api_url)

    def open_config(self) -> None:
        """The tray's Open Config: the Settings page, where the file can be opened too."""
        self.show_dashboard()
        self.dashboard.show_settings()

    def quit(self) -> None:
        """Quit, SIGTERM and aboutToQuit all end here: one event the main coroutine awaits.
        Asked again while it waits for answers in progress, it quits now (a second Quit, a
        second Ctrl+C, closing the window again)."""
        if self.stopping.is_set():
            self.controller.quit_now()
        self.stopping.set()

    def _on_quitting(self, answers: int) -> None:
        # Without a tray, the closed dashboard was the only window: bring it back while Quit
        # waits, so the wait is seen and Quit now is at hand.
        if answers and self.tray is None and not self.dashboard.isVisible():
            self.dashboard.show()

    def _notify(self, title: str, message: str) -> None:
        if self.tray is not None:
            self.tray.show_message(title, message)
        else:
            self.dashboard.append_log(f"{title}: {message}")

    async def run(self) -> None:
        await self.controller.start()
        await self.config_manager.refresh_models()
        await self.stopping.wait()
        await self.controller.shutdown()
        if self.tray is not None:
            self.tray.hide()
        self.dashboard.hide()


def user_config_path() -> Path:
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppConfigLocation)
    return Path(base) / "config.toml"


def config_manager_for(args: argparse.Namespace) -> ConfigManager:
    """The desktop app's config file: `--config`, $CHATBOT_CONFIG, or the user's own copy."""
    env = desktop_env()
    path = Path(args.config or env.get("CHATBOT_CONFIG") or user_config_path())
    return ConfigManager(path, cli_overrides(args))


def run(args: argparse.Namespace, argv0: str = APP_ID) -> int:
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        app = existing
    else:
        with gdk_without_gl():
            app = QApplication([argv0])
    app.setApplicationName(APP_ID)
    app.setApplicationDisplayName("Chatbot Companion")
    # Lets Wayland docks match the window to the installed desktop entry (and its icon).
    app.setDesktopFileName(APP_ID)
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)
    instance = SingleInstance()
    if not instance.acquire():
        shown = instance.notify_first()
        print(
            "Chatbot Companion is already running"
            + ("; its dashboard was raised." if shown else "."),
            file=sys.stderr,
        )
        return 0
    manager = config_manager_for(args)
    # The user's own copy is created from the default on first run; a --config file is not.
    loaded = manager.load_initial(create=not (args.config or os.environ.get("CHATBOT_CONFIG")))
    setup_logging(loaded.config.logging.level)
    for problem in loaded.problems:
        log.error("config error: %s", problem)
    if loaded.problems:
        runs_on = (
            "the built-in defaults"
            if loaded.broken
            else "the file's other values, with defaults for the bad ones"
        )
        log.error("running on %s; %s is left as it is", runs_on, manager.path)
    controller = Controller(loaded.config, manager.path, config_problems=loaded.problems)
    with asyncio.Runner(loop_factory=lambda: qasync.QEventLoop(app)) as runner:
        companion = Companion(controller, manager, loaded=loaded)
        instance.activated.connect(companion.show_dashboard)
        _route_signals(runner.get_loop(), companion)
        runner.run(companion.run())
    instance.release()
    return 0


def _route_signals(loop: asyncio.AbstractEventLoop, companion: Companion) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, companion.quit)
        except (NotImplementedError, RuntimeError):
            # qasync may not support it: a plain handler runs at the next Python callback
            # (the controller's 1 s timer guarantees there is one).
            with contextlib.suppress(ValueError):
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(companion.quit))
