"""Cache tiers behind RAM, as a client sees them: a SQLite file that outlives the gateway, and a
Redis shared by two gateways. Real sockets, the real simulator, a real redis-server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from server.auth import new_key
from server.services.cache import CachedAnswer
from server.services.cache_redis import PREFIX
from server.services.cache_sqlite import SqliteTier
from tests.conftest import Server, Sim, free_port, parse_sse, user, wait_for
from tests.server import test_web_dashboard

CHAT = "/api/chat-optimized"
STATS = "/api/cache-stats"
browser = test_web_dashboard.browser  # the Chromium fixture (skips when there is none)
REDIS = shutil.which("redis-server") or shutil.which("valkey-server")


async def generations(sim: Sim) -> int:
    return (await sim.stats())["by_path"].get("/api/chat", 0)


async def ask(http: aiohttp.ClientSession, server: Server, text: str) -> tuple[str, dict]:
    """A whole-answer chat; returns (X-Cache, JSON)."""
    body = {"messages": user(text), "stream": False}
    async with http.post(server.url + CHAT, json=body) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-Cache"], await r.json()


async def tiers(http: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    async with http.get(server.url + STATS) as r:
        return (await r.json())["response_cache"]["tiers"]


async def health_tiers(http: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    async with http.get(server.url + "/health") as r:
        return (await r.json())["cache_tiers"]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition on the gateway's own state (polled, never a fixed sleep)."""

    async def check() -> bool:
        return condition()

    assert await wait_for(check, timeout), "the condition never held"


async def written(server: Server, tier: str, count: int) -> None:
    """Wait until the tier's background writer has stored `count` answers."""
    await until(lambda: server.gateway.cache_tiers()[tier]["writes"] >= count)


# -- SQLite ----------------------------------------------------------------------------------


async def test_a_question_asked_before_a_restart_is_a_hit_after_it(
    start_server, sim, http, tmp_path
):
    db = tmp_path / "answers.sqlite3"
    first = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    x, before = await ask(http, first, "what did I ask yesterday?")
    assert x == "MISS"
    await written(first, "sqlite", 1)
    await first.host.stop()

    second = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    assert second.gateway.cache.entries == 0  # a new process: RAM starts empty
    x, after = await ask(http, second, "what did I ask yesterday?")
    assert x == "HIT" and after["cached"] is True
    assert after["content"] == before["content"]
    assert await generations(sim) == 1  # Ollama generated it once, before the restart
    shown = await tiers(http, second)
    assert shown["sqlite"]["state"] == "up" and shown["sqlite"]["hits"] == 1
    assert shown["sqlite"]["entries"] == 1
    assert second.gateway.cache.entries == 1  # copied into RAM: the next hit is RAM's
    await ask(http, second, "what did I ask yesterday?")
    shown = await tiers(http, second)
    assert shown["memory"]["hits"] == 1 and shown["sqlite"]["hits"] == 1


async def test_a_streamed_question_after_a_restart_is_replayed_from_disk(
    start_server, sim, http, tmp_path
):
    db = tmp_path / "answers.sqlite3"
    first = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    _, before = await ask(http, first, "stream it back")
    await written(first, "sqlite", 1)
    await first.host.stop()

    second = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    body = {"messages": user("stream it back")}
    async with http.post(second.url + CHAT, json=body) as r:
        frames = parse_sse(await r.text())
    assert frames[-1]["done"] is True and frames[-1]["cached"] is True
    assert "".join(f.get("content", "") for f in frames) == before["content"]
    assert await generations(sim) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"messages": user("stream the disk's answer"), "stream": True}),
        ("/api/chat", {"model": "llama3.2", "messages": user("native from disk")}),
        (
            "/v1/chat/completions",
            {"model": "llama3.2", "messages": user("openai from disk"), "stream": True},
        ),
    ],
)
async def test_a_streamed_repeat_answered_from_disk_says_hit_in_its_header(
    start_server, sim, http, tmp_path, path, body
):
    db = tmp_path / "answers.sqlite3"
    first = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    async with http.post(first.url + path, json=body) as r:
        assert r.status == 200 and r.headers["X-Cache"] == "MISS"
        await r.read()
    await written(first, "sqlite", 1)
    await first.host.stop()

    second = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    async with http.post(second.url + path, json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Cache"] == "HIT"  # known before the headers, not only in the frames
        await r.read()
    assert await generations(sim) == 1
    assert (await tiers(http, second))["sqlite"]["hits"] == 1


async def test_a_gateway_stopped_and_started_again_still_has_its_tiers(
    start_server, sim, http, tmp_path, redis
):
    server = await start_server(
        cache__backend="sqlite+redis",
        cache__disk_path=str(tmp_path / "answers.sqlite3"),
        cache__redis_url=redis.url,
    )
    await ask(http, server, "before the stop")
    await written(server, "sqlite", 1)
    await written(server, "redis", 1)
    await server.host.stop()
    await server.host.start()
    server = Server(f"http://127.0.0.1:{server.host.port}", server.host)
    server.gateway.flush_cache()  # RAM only: the answer is still in both tiers
    x, _ = await ask(http, server, "before the stop")
    assert x == "HIT" and await generations(sim) == 1
    shown = await tiers(http, server)
    assert shown["sqlite"]["state"] == "up" and shown["redis"]["state"] == "up"
    assert shown["sqlite"]["hits"] == 1


async def test_a_bulk_job_after_a_restart_gets_its_answers_from_disk(
    start_server, sim, http, tmp_path
):
    db = tmp_path / "answers.sqlite3"
    first = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    await ask(http, first, "bulk one")
    await ask(http, first, "bulk two")
    await written(first, "sqlite", 2)
    await first.host.stop()

    second = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    bulk = {"requests": [{"messages": user(t)} for t in ("bulk one", "bulk two", "bulk new")]}
    async with http.post(second.url + "/api/chat-batch", json=bulk) as r:
        assert r.status == 200, await r.text()
        results = (await r.json())["results"]
    assert [item["cached"] for item in results] == [True, True, False]
    assert await generations(sim) == 3  # the two before the restart, and the new one


async def test_answers_keep_their_ttl_on_disk(start_server, sim, http, tmp_path):
    db = tmp_path / "answers.sqlite3"
    first = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    await ask(http, first, "short-lived")
    await written(first, "sqlite", 1)
    await first.host.stop()
    # The same file under a TTL of one second: the answer (stored well over that ago by the
    # time the row's age is compared, below) is expired, not served.
    await asyncio.sleep(1.1)
    second = await start_server(
        cache__backend="sqlite", cache__disk_path=str(db), cache__ttl_seconds=1
    )
    x, _ = await ask(http, second, "short-lived")
    assert x == "MISS" and await generations(sim) == 2


async def test_a_file_that_cannot_be_opened_is_reported_and_the_gateway_serves_from_ram(
    start_server, sim, http, tmp_path, caplog
):
    # A corrupt file heals itself (test_cache_sqlite_heal.py); one that cannot be opened at all,
    # here a directory where the file should be, leaves the tier down (retrying) meanwhile.
    db = tmp_path / "answers.sqlite3"
    db.mkdir()
    server = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    shown = await tiers(http, server)
    assert shown["sqlite"]["state"] == "down"
    assert str(db) in shown["sqlite"]["reason"]
    assert "unable to open database file" in shown["sqlite"]["reason"]
    assert (await health_tiers(http, server))["sqlite"]["state"] == "down"
    assert any("cache tier sqlite is down" in r.getMessage() for r in caplog.records)
    async with http.get(server.url + "/metrics") as r:
        scraped = await r.text()
    assert 'chatbot_cache_tier_up{tier="sqlite"} 0.0' in scraped
    assert 'chatbot_cache_tier_up{tier="memory"} 1.0' in scraped

    x1, a = await ask(http, server, "still working?")
    x2, b = await ask(http, server, "still working?")
    assert (x1, x2) == ("MISS", "HIT") and a["content"] == b["content"]  # RAM still caches
    assert await generations(sim) == 1
    async with http.post(server.url + STATS, json={"action": "clear"}) as r:
        flushed = await r.json()
    assert flushed["tiers"]["memory"] == 1
    assert flushed["tiers"]["sqlite"].startswith("not cleared: down")


async def test_an_unwritable_directory_is_reported(start_server, http, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    server = await start_server(
        cache__backend="sqlite", cache__disk_path=str(blocker / "sub" / "answers.sqlite3")
    )
    shown = await tiers(http, server)
    assert shown["sqlite"]["state"] == "down" and "a-file" in shown["sqlite"]["reason"]
    x, _ = await ask(http, server, "hello")
    assert x == "MISS"


async def test_flush_clears_ram_and_disk_and_says_which(start_server, sim, http, tmp_path):
    db = tmp_path / "answers.sqlite3"
    server = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    await ask(http, server, "one")
    await ask(http, server, "two")
    await written(server, "sqlite", 2)
    async with http.post(server.url + STATS, json={"action": "clear"}) as r:
        flushed = await r.json()
    assert flushed["cleared_entries"] == 2
    assert flushed["tiers"] == {"memory": 2, "sqlite": 2}
    await server.host.stop()
    again = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    x, _ = await ask(http, again, "one")
    assert x == "MISS"  # the disk copy went too


async def test_the_disk_tier_stays_within_its_budget(tmp_path):
    """Answers of 100 KB into a 1 MiB file: the oldest go, the newest stay, the file's rows
    stay within the budget."""
    tier = SqliteTier(tmp_path / "answers.sqlite3", max_size_mb=1, ttl_seconds=3600)
    await tier.start()
    text = "x" * 100_000
    for i in range(30):
        tier.put(f"key{i}", CachedAnswer(text, "llama3.2", 1, time.monotonic()))
        await asyncio.sleep(0)
    await tier.close()  # writes what is queued first

    again = SqliteTier(tmp_path / "answers.sqlite3", max_size_mb=1, ttl_seconds=3600)
    await again.start()
    try:
        assert again.size_bytes <= 1024 * 1024 and 0 < again.entries < 30
        assert await again.get("key29") is not None  # the newest stays
        assert await again.get("key0") is None  # the oldest went first
    finally:
        await again.close()


# -- Redis -----------------------------------------------------------------------------------


class RedisProcess:
    """A redis-server of the test's own: a free port, a temp dir, no snapshots."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS is not None
        self.proc = subprocess.Popen(
            [
                REDIS,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        async def answers() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True

        for _ in range(200):
            if await answers():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    if REDIS is None:
        pytest.skip(
            "redis-server (or valkey-server) is not installed: apt-get install redis-server"
        )
    proc = RedisProcess(tmp_path)
    proc.start()
    await proc.ready()
    yield proc
    proc.stop()


async def redis_state(server: Server) -> str:
    return str(server.gateway.cache_tiers()["redis"]["state"])


async def test_a_question_answered_by_one_gateway_is_a_hit_on_the_other(
    start_server: Callable[..., Awaitable[Server]], sim, http, redis
):
    one = await start_server(cache__backend="redis", cache__redis_url=redis.url)
    two = await start_server(cache__backend="redis", cache__redis_url=redis.url)
    assert one.url != two.url
    x, first = await ask(http, one, "shared knowledge")
    assert x == "MISS"
    await written(one, "redis", 1)
    x, second = await ask(http, two, "shared knowledge")
    assert x == "HIT" and second["cached"] is True and second["content"] == first["content"]
    assert await generations(sim) == 1
    shown = await tiers(http, two)
    assert shown["redis"] == {**shown["redis"], "state": "up", "hits": 1}
    await until(lambda: two.gateway.cache_tiers()["redis"]["entries"] == 1)


async def test_per_key_scope_is_kept_in_redis(start_server, sim, http, redis):
    """Two callers with their own keys and `per_key` scope: one's answer is no hit for the
    other, even through the shared tier."""
    made = {name: new_key(name) for name in ("alice", "bob")}
    keys = {name: key for name, (key, _) in made.items()}
    entries = tuple(entry for _, entry in made.values())
    common = {
        "cache__backend": "redis",
        "cache__redis_url": redis.url,
        "cache__scope": "per_key",
        "auth__keys": entries,
    }
    one = await start_server(**common)
    two = await start_server(**common)
    body = {"messages": user("my secret question"), "stream": False}
    async with http.post(one.url + CHAT, json=body, headers={"X-API-Key": keys["alice"]}) as r:
        assert r.status == 200, await r.text()
    await written(one, "redis", 1)
    async with http.post(two.url + CHAT, json=body, headers={"X-API-Key": keys["bob"]}) as r:
        assert r.headers["X-Cache"] == "MISS"
    async with http.post(two.url + CHAT, json=body, headers={"X-API-Key": keys["alice"]}) as r:
        assert r.headers["X-Cache"] == "HIT"
    assert await generations(sim) == 2


async def test_redis_stopping_mid_traffic_fails_no_request_and_the_tier_comes_back(
    start_server, sim, http, redis
):
    server = await start_server(cache__backend="redis", cache__redis_url=redis.url)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic(n: int) -> None:
        i = 0
        while not stop.is_set():
            body = {"messages": user(f"traffic {n} {i % 5}"), "stream": i % 2 == 0}
            async with http.post(server.url + CHAT, json=body) as r:
                await r.read()
                statuses.append(r.status)
            i += 1

    clients = [asyncio.create_task(traffic(n)) for n in range(3)]
    await until(lambda: len(statuses) >= 10)
    redis.stop()
    await until(lambda: server.gateway.cache_tiers()["redis"]["state"] == "down")
    shown = await tiers(http, server)
    assert shown["redis"]["state"] == "down" and shown["redis"]["reason"]
    assert (await health_tiers(http, server))["redis"]["state"] == "down"
    during = len(statuses)
    await until(lambda: len(statuses) >= during + 10)  # answered while Redis is gone
    redis.start()
    await redis.ready()
    await until(lambda: server.gateway.cache_tiers()["redis"]["state"] == "up", timeout=15)
    stop.set()
    await asyncio.gather(*clients)
    assert statuses and set(statuses) == {200}

    # Up again for real: a new answer reaches Redis, and another gateway finds it there.
    x, first = await ask(http, server, "after the restart of redis")
    await written(server, "redis", 1)
    other = await start_server(cache__backend="redis", cache__redis_url=redis.url)
    x, again = await ask(http, other, "after the restart of redis")
    assert x == "HIT" and again["content"] == first["content"]


async def test_a_slow_redis_costs_a_request_no_more_than_the_lookup_timeout(
    start_server, sim, http, redis
):
    server = await start_server(cache__backend="redis", cache__redis_url=redis.url)
    admin = Redis.from_url(redis.url)
    try:
        # Redis answers nobody else for 4 s: as a hung or overloaded server would.
        await admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")
        started = time.monotonic()
        x, _ = await ask(http, server, "while redis hangs")
        took = time.monotonic() - started
        assert x == "MISS"
        assert took < 3.0, f"the request waited {took:.1f} s on a hung Redis"
        shown = (await tiers(http, server))["redis"]
        assert shown["state"] == "down" and shown["reason"].endswith("timed out")
        x, _ = await ask(http, server, "while redis hangs")
        assert x == "HIT"  # RAM still answers
        await until(lambda: server.gateway.cache_tiers()["redis"]["state"] == "up", timeout=20)
    finally:
        await admin.aclose()


async def test_a_gateway_starts_and_serves_when_redis_is_not_there(
    start_server, sim, http, tmp_path
):
    url = f"redis://127.0.0.1:{free_port()}/0"
    server = await start_server(
        cache__backend="sqlite+redis",
        cache__redis_url=url,
        cache__disk_path=str(tmp_path / "answers.sqlite3"),
    )
    shown = await tiers(http, server)
    assert shown["redis"]["state"] == "down" and "127.0.0.1" in shown["redis"]["reason"]
    x1, _ = await ask(http, server, "no redis")
    x2, _ = await ask(http, server, "no redis")
    assert (x1, x2) == ("MISS", "HIT")
    async with http.post(server.url + STATS, json={"action": "clear"}) as r:
        flushed = await r.json()
    assert flushed["tiers"]["redis"].startswith("not cleared: down")


async def test_flush_clears_redis_too(start_server, sim, http, redis):
    server = await start_server(cache__backend="redis", cache__redis_url=redis.url)
    await ask(http, server, "flush me")
    await written(server, "redis", 1)
    async with http.post(server.url + STATS, json={"action": "clear"}) as r:
        flushed = await r.json()
    assert flushed["tiers"] == {"memory": 1, "redis": 1}
    other = await start_server(cache__backend="redis", cache__redis_url=redis.url)
    x, _ = await ask(http, other, "flush me")
    assert x == "MISS"


def test_keys_are_namespaced_with_a_format_version():
    assert PREFIX.startswith("chatbot-companion:v")


# -- the web dashboard -----------------------------------------------------------------------


async def test_the_web_dashboard_shows_the_tiers_and_what_a_flush_cleared(
    start_server, http, browser, tmp_path
):
    db = tmp_path / "answers.sqlite3"
    server = await start_server(cache__backend="sqlite", cache__disk_path=str(db))
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(server.url + "/dashboard", wait_until="domcontentloaded")
    await page.locator("#t-cache-tiers", has_text="disk up · 0 · 0 hits").wait_for()
    await ask(http, server, "for the page")
    await written(server, "sqlite", 1)
    await page.locator("#t-cache-tiers", has_text="disk up · 1 · 0 hits").wait_for()

    async def accept(dialog: Any) -> None:
        await dialog.accept()

    page.on("dialog", accept)
    await page.click("#flush")
    await page.locator("#flush-result", has_text="Flushed: RAM 1, disk 1").wait_for()

    broken = tmp_path / "broken.sqlite3"
    broken.mkdir()  # a directory where the file should be: down until it is fixed
    down = await start_server(cache__backend="sqlite", cache__disk_path=str(broken))
    await page.goto(down.url + "/dashboard", wait_until="domcontentloaded")
    tiers_line = page.locator("#t-cache-tiers.bad", has_text="disk down")
    await tiers_line.wait_for()
    assert "unable to open" in (await tiers_line.get_attribute("title") or "")
    assert errors == []


async def test_a_memory_only_gateway_shows_no_tier_line(start_server, browser):
    server = await start_server()
    page = await browser.new_page()
    await page.goto(server.url + "/dashboard", wait_until="domcontentloaded")
    await page.locator("#t-cache", has_text="0 entries").wait_for()
    assert await page.locator("#t-cache-tiers").is_hidden()
