"""The SQLite cache tier heals itself, as a client and an operator see it: a corrupt file (found
at start or while serving) is moved aside and replaced by a fresh one, and a directory that
cannot be written leaves the tier down only until it can. Real server, real files, no restart."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.gateway import Gateway
from server.services.cache_sqlite import SCHEMA, SqliteTier
from server.services.tiers import FORMAT_VERSION, Tiers
from tests.conftest import Serve, Server, Sim, make_config
from tests.server.test_cache_tiers import ask, generations, health_tiers, tiers, until, written

GARBAGE = b"this is not a database, just garbage " * 100


async def scraped_up(http: aiohttp.ClientSession, server: Server) -> str:
    """What /metrics says of the sqlite tier: its `chatbot_cache_tier_up` line."""
    async with http.get(server.url + "/metrics") as r:
        text = await r.text()
    return next(line for line in text.splitlines() if line.startswith(TIER_UP))


TIER_UP = 'chatbot_cache_tier_up{tier="sqlite"}'


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "chatbot.cache" and r.levelno == logging.WARNING
    ]


@pytest.fixture
def start_with_tier(sim: Sim, serve: Serve) -> Callable[[SqliteTier], Awaitable[Server]]:
    """A gateway whose sqlite tier is the one given (built with a short retry interval, which
    the config does not offer), otherwise as `[cache].backend = "sqlite"` makes it."""

    async def start(tier: SqliteTier) -> Server:
        config = make_config(
            ollama__api_url=sim.url,
            ollama__warm_up=False,
            cache__backend="sqlite",
            cache__disk_path=str(tier.path),
        )
        gateway = Gateway(config)
        gateway.tiers = Tiers([tier])
        return await serve(gateway)

    return start


def sqlite_stats(server: Server) -> dict[str, Any]:
    return server.gateway.cache_tiers()["sqlite"]


# -- a corrupt file ---------------------------------------------------------------------------


def not_a_database(db: Path) -> str:
    db.write_bytes(GARBAGE)
    return "file is not a database"


def malformed(db: Path) -> str:
    """A cache file of this version whose header is sound but whose later pages are garbage."""
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        conn.executemany(
            "INSERT INTO answers VALUES (?, 1.0, 10, ?)",
            [(f"k{i}", b"x" * 3000) for i in range(50)],
        )
    conn.close()
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(4096)
        f.write((GARBAGE * (size // len(GARBAGE) + 1))[: size - 4096])
    return "database disk image is malformed"


@pytest.mark.parametrize("damage", [not_a_database, malformed])
async def test_a_corrupt_file_at_start_is_moved_aside_and_a_fresh_one_serves(
    start_server, sim, http, tmp_path, caplog, damage
):
    db = tmp_path / "answers.sqlite3"
    why = damage(db)
    damaged = db.read_bytes()
    server = await start_server(cache__backend="sqlite", cache__disk_path=str(db))

    shown = (await tiers(http, server))["sqlite"]
    assert shown["state"] == "up" and "reason" not in shown
    assert shown["moved_aside"] == f"{db}.corrupt" and shown["entries"] == 0
    assert (await health_tiers(http, server))["sqlite"]["state"] == "up"
    assert await scraped_up(http, server) == f"{TIER_UP} 1.0"
    # Nothing lost: the old file is kept, byte for byte, beside the fresh one.
    aside = tmp_path / "answers.sqlite3.corrupt"
    assert aside.read_bytes() == damaged
    assert db.read_bytes() != damaged
    [warning] = warnings(caplog)
    assert str(db) in warning and f"{db}.corrupt" in warning and why in warning

    # The fresh file is a working tier: an answer stored now is a hit after a restart.
    x, first = await ask(http, server, "after the heal")
    assert x == "MISS"
    await written(server, "sqlite", 1)
    await server.host.stop()
    again = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    x, second = await ask(http, again, "after the heal")
    assert x == "HIT" and second["content"] == first["content"]
    assert await generations(sim) == 1
    assert "moved_aside" not in (await tiers(http, again))["sqlite"]  # nothing this time


async def test_one_corrupt_copy_is_kept_the_newest(start_server, http, tmp_path, caplog):
    db, aside = tmp_path / "answers.sqlite3", tmp_path / "answers.sqlite3.corrupt"
    aside.write_bytes(b"an older corrupt copy")
    db.write_bytes(GARBAGE)
    server = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    assert (await tiers(http, server))["sqlite"]["state"] == "up"
    assert aside.read_bytes() == GARBAGE
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == [
        "answers.sqlite3.corrupt"
    ]
    [warning] = warnings(caplog)
    assert "replacing the copy kept there before" in warning


async def test_a_file_corrupted_while_serving_is_healed_and_answers_keep_coming(
    start_server, sim, http, tmp_path, caplog
):
    db = tmp_path / "answers.sqlite3"
    server = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    await ask(http, server, "before the damage")
    await written(server, "sqlite", 1)

    # Something scribbles over the file (and its write-ahead log) while the gateway uses it.
    for part in (db, Path(f"{db}-wal")):
        size = part.stat().st_size
        with part.open("r+b") as f:
            f.write((GARBAGE * (size // len(GARBAGE) + 1))[:size])

    # Clients keep asking new questions; every one is answered while SQLite notices the damage
    # (on the next lookup that reads the file), moves it aside and starts a fresh one.
    asked = 0
    while "moved_aside" not in sqlite_stats(server):
        assert asked < 50, f"never healed: {sqlite_stats(server)}"
        x, answer = await ask(http, server, f"during the damage {asked}")
        assert x == "MISS" and answer["content"]
        asked += 1
    await until(lambda: sqlite_stats(server)["state"] == "up")
    assert (tmp_path / "answers.sqlite3.corrupt").exists()
    assert any(str(db) in w and f"{db}.corrupt" in w for w in warnings(caplog))
    assert await scraped_up(http, server) == f"{TIER_UP} 1.0"

    # The fresh file works: an answer stored now comes back from it, RAM emptied.
    writes = sqlite_stats(server)["writes"]
    _, first = await ask(http, server, "after the heal")
    await written(server, "sqlite", writes + 1)
    server.gateway.flush_cache()  # RAM only
    hits = sqlite_stats(server)["hits"]
    x, again = await ask(http, server, "after the heal")
    assert x == "HIT" and again["content"] == first["content"]
    assert sqlite_stats(server)["hits"] == hits + 1


# -- a directory that cannot be written -----------------------------------------------------------


def a_file_in_the_way(tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    """A file where the cache directory should be made; fixed by removing it."""
    blocker = tmp_path / "cache"
    blocker.write_text("")
    return blocker / "answers.sqlite3", blocker.unlink


def a_read_only_directory(tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o500)
    return directory / "answers.sqlite3", lambda: directory.chmod(0o700)


@pytest.mark.parametrize(
    "unwritable",
    [
        a_file_in_the_way,
        pytest.param(
            a_read_only_directory,
            marks=pytest.mark.skipif(
                sys.platform == "win32" or os.geteuid() == 0, reason="root writes anywhere"
            ),
        ),
    ],
)
async def test_an_unwritable_directory_leaves_the_tier_down_until_it_is_fixed(
    start_with_tier, sim, http, tmp_path, unwritable
):
    db, fix = unwritable(tmp_path)
    tier = SqliteTier(db, max_size_mb=64, ttl_seconds=3600, retry_s=(0.05, 0.2))
    server = await start_with_tier(tier)

    shown = (await tiers(http, server))["sqlite"]
    assert shown["state"] == "down" and str(db) in shown["reason"]
    assert (await health_tiers(http, server))["sqlite"]["state"] == "down"
    assert await scraped_up(http, server) == f"{TIER_UP} 0.0"
    assert not list(tmp_path.glob("**/*.corrupt"))  # not corrupt: nothing is moved aside
    # It keeps trying (the reason stays the same while it fails).
    await until(lambda: "retry_in_s" in sqlite_stats(server))
    x1, first = await ask(http, server, "while the disk is away")
    x2, _ = await ask(http, server, "while the disk is away")
    assert (x1, x2) == ("MISS", "HIT")  # RAM answers meanwhile

    fix()  # the operator fixes it; no restart
    await until(lambda: sqlite_stats(server)["state"] == "up")
    assert (await health_tiers(http, server))["sqlite"]["state"] == "up"
    assert await scraped_up(http, server) == f"{TIER_UP} 1.0"
    assert "retry_in_s" not in (await tiers(http, server))["sqlite"]

    # The answer given while it was down was kept for it, and new ones reach the file too.
    await ask(http, server, "once it is back")
    await written(server, "sqlite", 2)
    server.gateway.flush_cache()
    x, again = await ask(http, server, "while the disk is away")
    assert x == "HIT" and again["content"] == first["content"]
    x, _ = await ask(http, server, "once it is back")
    assert x == "HIT" and await generations(sim) == 2
    assert db.exists()


async def test_a_file_deleted_while_serving_is_made_again(start_server, sim, http, tmp_path):
    """Deleting the cache file (to empty it) is followed as a restart would: the next answer
    goes to a new file at the same path, not to the deleted one."""
    db = tmp_path / "answers.sqlite3"
    server = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    await ask(http, server, "forget me")
    await written(server, "sqlite", 1)
    for part in tmp_path.iterdir():
        part.unlink()

    _, first = await ask(http, server, "remember me")
    await until(lambda: db.exists() and sqlite_stats(server)["writes"] == 2)
    await until(lambda: sqlite_stats(server)["state"] == "up")
    assert sqlite_stats(server)["entries"] == 1
    server.gateway.flush_cache()  # RAM only
    x, again = await ask(http, server, "remember me")
    assert x == "HIT" and again["content"] == first["content"]
    x, _ = await ask(http, server, "forget me")
    assert x == "MISS"
