"""The desktop app keeps answers in a SQLite file by default ([cache].backend auto): the file in
the platform cache directory, the cache tile naming the disk tier, and Flush Cache saying what it
cleared there."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

CHAT = "/api/chat-optimized"


async def ask(url: str, text: str) -> dict:
    body = {"messages": [{"role": "user", "content": text}], "stream": False}
    async with aiohttp.ClientSession() as s, s.post(url + CHAT, json=body) as r:
        assert r.status == 200
        return await r.json()


def cache_file() -> Path:
    # tests/app/conftest.py points XDG_CACHE_HOME at the test's own directory.
    return Path(os.environ["XDG_CACHE_HOME"]) / "chatbot-companion" / "answers.sqlite3"


def test_the_desktop_app_keeps_answers_on_disk_and_flush_says_so(start_app, run, qtbot):
    app = start_app(tray=True)
    gateway = app.controller.gateway
    run(ask(app.url, "remember me"))
    qtbot.waitUntil(lambda: gateway.cache_tiers()["sqlite"]["writes"] == 1, timeout=5000)
    assert cache_file().stat().st_size > 0

    app.controller.tick()
    tile = app.companion.dashboard.tiles["cache"]
    assert tile.value_text() == "1 entry"
    assert tile.sub_text().endswith(" · disk")

    app.companion.tray.actions["flush"].trigger()
    app.companion.dashboard.confirm_dialog.accept()
    title, message = app.companion.tray.showing() or ("", "")
    assert title == "Cache flushed" and message.startswith("Flushed 1 response (")
    assert message.endswith("; also disk 1")  # what the file held, cleared in the background
    qtbot.waitUntil(lambda: gateway.cache_tiers()["sqlite"]["entries"] == 0, timeout=5000)


def test_a_cache_file_that_cannot_be_opened_shows_on_the_tile_and_the_app_serves(
    start_app, run, qtbot
):
    # A corrupt file heals itself (tests/server/test_cache_sqlite_heal.py); a directory where
    # the file should be leaves the disk tier down until it is fixed.
    cache_file().mkdir(parents=True)
    app = start_app()
    answer = run(ask(app.url, "still here"))
    assert answer["cached"] is False
    assert run(ask(app.url, "still here"))["cached"] is True  # RAM still caches
    app.controller.tick()
    tile = app.companion.dashboard.tiles["cache"]
    assert tile.sub_text().endswith(" · disk down")
    assert "unable to open database file" in tile.toolTip()
