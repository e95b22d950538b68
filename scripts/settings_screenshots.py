"""Screenshots of the Settings page (valid, with an error, creating an API key, and started from
a file with a bad value) from the real app (offscreen).

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/settings_screenshots.py [OUTDIR]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync
from PySide6.QtGui import QColor, QPainter, QPixmap
from PySide6.QtWidgets import QApplication, QWidget

from app.companion import Companion
from app.config_manager import ConfigManager, values_of
from app.controller import Controller
from app.settings.keys import KeysEditor
from server import config_file, simulator
from server.auth import new_key
from server.config import default_toml, load


def with_dialog(window: QWidget, dialog: QWidget) -> QPixmap:
    """The window with the dialog over it, framed; high enough to leave the field in view."""
    shot = window.grab()
    over = dialog.grab()
    x, y = (shot.width() - over.width()) // 2, (shot.height() - over.height()) // 4
    painter = QPainter(shot)
    painter.fillRect(x - 1, y - 1, over.width() + 2, over.height() + 2, QColor("#8a8f98"))
    painter.drawPixmap(x, y, over)
    painter.end()
    return shot


async def shoot(out: Path) -> None:
    runner, sim_port = await simulator.start(
        simulator.SimulatorSettings(models=("llama3.2:latest", "qwen3:4b", "mistral:7b"))
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(default_toml())
        start = values_of(load(path, env={}))
        start[("ollama", "api_url")] = f"http://127.0.0.1:{sim_port}"
        start[("server", "port")] = 8488
        config_file.save(path, start)
        manager = ConfigManager(path)
        loaded = manager.load_initial(create=False)
        controller = Controller(loaded.config, path)
        companion = Companion(controller, manager, tray_available=False, loaded=loaded)
        task = asyncio.ensure_future(companion.run())
        await asyncio.sleep(1.5)
        window = companion.dashboard
        window.resize(1000, 760)
        window.show_settings()
        page = window.settings
        values = values_of(controller.gateway.config)
        values[("cache", "max_size_mb")] = 512
        values[("queue", "max_concurrent")] = 2
        await manager.save(values)
        page.test_button.click()
        await asyncio.sleep(1.0)
        window.grab().save(str(out / "settings.png"))
        api = page.field("ollama", "api_url")
        api.setText("localhost:11434")
        page.field("ollama", "model").setCurrentText("llama9")
        page.field("cache", "ttl_seconds").setValue(60)
        await asyncio.sleep(0.3)
        window.grab().save(str(out / "settings-error.png"))
        assert load(path, env={}).cache.max_size_mb == 512
        # API keys: two stored, a third just created and shown once.
        page.revert()
        values = values_of(controller.gateway.config)
        values[("auth", "keys")] = [new_key("alice", "admin")[1], new_key("ci-runner", "batch")[1]]
        await manager.save(values)
        keys = page.field("auth", "keys")
        assert isinstance(keys, KeysEditor)
        page.scroll_area.ensureWidgetVisible(keys, 0, 120)
        dialog = keys.open_create_dialog()
        dialog.name_field.setText("bob")
        dialog.create_button.click()
        await asyncio.sleep(0.3)
        with_dialog(window, dialog).save(str(out / "settings-keys.png"))
        dialog.accept()
        companion.quit()
        await task
        companion.dashboard.close()
        # Started from a file with one bad value: the rest of it runs, the bad key is marked.
        path.write_text(path.read_text().replace("ttl_seconds = 3600", "ttl_seconds = -5"))
        manager = ConfigManager(path)
        loaded = manager.load_initial(create=False)
        controller = Controller(loaded.config, path, port_override=0)
        companion = Companion(controller, manager, tray_available=False, loaded=loaded)
        task = asyncio.ensure_future(companion.run())
        await asyncio.sleep(1.5)
        window = companion.dashboard
        window.resize(1000, 760)
        window.show_settings()
        page = window.settings
        row = page.field("cache", "ttl_seconds")
        page.scroll_area.ensureWidgetVisible(row, 0, 200)
        await asyncio.sleep(0.3)
        window.grab().save(str(out / "settings-file-problems.png"))
        companion.quit()
        await task
    await runner.cleanup()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication([])
    with asyncio.Runner(loop_factory=lambda: qasync.QEventLoop(app)) as runner:
        runner.run(shoot(out))
    print(f"screenshots in {out}/")


if __name__ == "__main__":
    main()
