"""The web dashboard at /dashboard: its files, its live feed, its access rules, and the page
itself in headless Chromium (Debian's `chromium`, driven by Playwright; no browser download)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server import auth
from server.keys import ACTIVE_STREAMS
from tests.conftest import Server, user, wait_for

CHAT = "/api/chat-optimized"
FEED = "/api/dashboard/feed"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def feed_frames(
    http: aiohttp.ClientSession, url: str, count: int, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    frames = []
    async with http.get(url + FEED, headers=headers or {}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                frames.append(json.loads(line[6:]))
                if len(frames) == count:
                    break
    return frames


# -- the page's files and GET /


async def test_the_page_and_its_files_are_served_and_nothing_else(server: Server, http):
    async with http.get(server.url + "/dashboard") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        page = await r.text()
    # Every file the page loads is there, and none comes from another host: it works offline.
    assert "http://" not in page and "https://" not in page
    for name in ("app.js", "api.js", "charts.js", "playground.js", "style.css"):
        async with http.get(f"{server.url}/dashboard/{name}") as r:
            assert r.status == 200, name
            text = await r.text()
            assert "http://" not in text and "https://" not in text, name
    for bad in ("nope.js", "..%2Fdashboard.py", "__init__.py", "%2E%2E%2Fapp.py"):
        async with http.get(f"{server.url}/dashboard/{bad}") as r:
            assert r.status == 404, bad


async def test_a_browser_asking_for_root_goes_to_the_dashboard_ollama_clients_do_not(
    server: Server, http
):
    async with http.get(
        server.url + "/", headers={"Accept": "text/html,*/*"}, allow_redirects=False
    ) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/dashboard"
    async with http.get(server.url + "/") as r:
        assert (r.status, await r.text()) == (200, "Ollama is running")
    async with http.head(server.url + "/", headers={"Accept": "text/html"}) as r:
        assert r.status == 200


# -- the feed


async def test_the_feed_sends_a_snapshot_a_second_with_the_queue_and_recent_requests(
    server: Server, http
):
    async with http.post(server.url + CHAT, json={"messages": user("one"), "stream": False}) as r:
        assert r.status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames = await feed_frames(http, server.url, 2)
    assert 0.8 < loop.time() - started < 3
    snap = frames[-1]
    assert snap["response_cache"]["entries"] == 1
    assert snap["requests_total"] == 1
    assert [r["cached"] for r in snap["recent"]] == [False]
    assert snap["queue_entries"] == []
    assert snap["viewer"] == {"name": "anonymous", "admin": True}


async def test_the_feed_stops_when_the_page_closes(server: Server, http):
    async with http.get(server.url + FEED) as r:
        await r.content.readline()
        assert len(_streams(server)) == 1
    assert await wait_for(lambda: _no_streams(server))


def _streams(server: Server) -> set[Any]:
    runner = server.host._runner
    assert runner is not None
    return runner.app[ACTIVE_STREAMS]


async def _no_streams(server: Server) -> bool:
    return not _streams(server)


async def test_queue_entries_show_who_waits_their_position_and_eta(
    start_server, http: aiohttp.ClientSession
):
    server = await start_server(queue__max_concurrent=1)
    slow = {"sim_tokens": 400, "sim_token_delay_ms": 10}
    tasks = [
        asyncio.create_task(_chat(http, server, f"q{i}", rid=f"r-{i}", options=slow))
        for i in range(3)
    ]
    try:

        async def all_there() -> bool:
            return len(server.gateway.queue_entries()) == 3

        assert await wait_for(all_there)
        rows = server.gateway.queue_entries()
        assert [r["status"] for r in rows] == ["processing", "queued", "queued"]
        assert [r["position"] for r in rows] == [0, 1, 2]
        assert rows[2]["estimated_wait_ms"] > rows[1]["estimated_wait_ms"] > 0
        assert {r["user"] for r in rows} == {"anonymous"}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _chat(
    http: aiohttp.ClientSession, server: Server, text: str, rid: str, **extra: Any
) -> list[dict[str, Any]]:
    body = {"messages": user(text), "stream": True, "request_id": rid, **extra}
    async with http.post(server.url + CHAT, json=body) as r:
        return [json.loads(line[6:]) async for line in r.content if line.startswith(b"data: ")]


# -- access rules


@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    return {name: auth.new_key(name, role) for name, role in (("root", "admin"), ("ada", "user"))}


async def test_with_keys_the_page_loads_but_the_feed_needs_one_and_shows_only_its_own(
    start_server, http: aiohttp.ClientSession, keys
):
    server = await start_server(auth__keys=tuple(entry for _, entry in keys.values()))
    root = {"Authorization": f"Bearer {keys['root'][0]}"}
    ada = {"X-API-Key": keys["ada"][0]}
    async with http.get(server.url + "/dashboard") as r:
        assert r.status == 200
    async with http.get(server.url + "/dashboard/app.js") as r:
        assert r.status == 200
    async with http.get(server.url + FEED) as r:
        assert r.status == 401
        assert (await r.json())["code"] == "unauthorized"
    for headers, text in ((root, "from root"), (ada, "from ada")):
        body = {"messages": user(text), "stream": False}
        async with http.post(server.url + CHAT, json=body, headers=headers) as r:
            assert r.status == 200
    [mine] = await feed_frames(http, server.url, 1, ada)
    assert [r["user"] for r in mine["recent"]] == ["ada"]
    assert set(mine["users"]) == {"ada"}
    assert mine["viewer"] == {"name": "ada", "admin": False}
    [everything] = await feed_frames(http, server.url, 1, root)
    assert sorted(r["user"] for r in everything["recent"]) == ["ada", "root"]
    assert everything["viewer"] == {"name": "root", "admin": True}


async def test_the_page_keeps_the_host_guard(server: Server, http):
    for path in ("/dashboard", FEED):
        async with http.get(server.url + path, headers={"Host": "evil.example:8080"}) as r:
            assert r.status == 403
            assert (await r.json())["code"] == "forbidden_host"


async def test_the_page_may_post_to_its_own_origin_other_origins_stay_refused(server: Server, http):
    body = {"messages": user("same origin"), "stream": False}
    own = server.url
    async with http.post(server.url + CHAT, json=body, headers={"Origin": own}) as r:
        assert r.status == 200
    async with http.post(
        server.url + CHAT, json=body, headers={"Origin": "http://127.0.0.1:1"}
    ) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "cors_origin_refused"


# -- the page in a real browser


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("no chromium (scripts/test.sh installs Debian's)")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def test_the_page_in_chromium_tiles_playground_cancel_and_flush(
    start_server, http: aiohttp.ClientSession, browser
):
    server = await start_server(queue__max_concurrent=1)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(server.url + "/", wait_until="domcontentloaded")
    assert page.url == server.url + "/dashboard"
    await page.locator("#status", has_text="live").wait_for()
    await page.locator("#t-cache", has_text="0 entries").wait_for()

    # The tiles follow the traffic.
    for text in ("a", "b", "a"):
        async with http.post(server.url + CHAT, json={"messages": user(text), "stream": False}):
            pass
    await page.locator("#t-cache", has_text="2 entries").wait_for()
    await page.locator("#t-hit-sub", has_text="1 hits · 2 misses").wait_for()
    await page.locator("#recent tbody tr").nth(2).wait_for()

    # The playground streams an answer, then says it was a hit the second time.
    await page.locator("#model option").first.wait_for(state="attached")
    await page.fill("#message", "Why is the sky blue?")
    await page.click("#send")
    await page.locator("#chat-meta .badge.miss").wait_for()
    answer = await page.text_content("#answer")
    assert answer and len(answer.split()) >= 3
    assert "TTFT" in (await page.text_content("#chat-meta") or "")
    await page.click("#send")
    await page.locator("#chat-meta .badge.hit").wait_for()
    assert await page.text_content("#answer") == answer

    # A queued request is cancelled from the queue table; its client hears it.
    slow = {"sim_tokens": 2000, "sim_token_delay_ms": 5}
    holder = asyncio.create_task(_chat(http, server, "hold", "r-holder", options=slow))
    waiter = asyncio.create_task(_chat(http, server, "wait", "r-waiter", options=slow))
    try:
        row = page.locator('#queue tr[data-request-id="r-waiter"]')
        await row.locator("td", has_text="queued").wait_for()
        await row.locator("button.cancel").click()
        frames = await asyncio.wait_for(waiter, 10)
        assert frames[-1]["code"] == "cancelled", frames[-1]
        await row.wait_for(state="detached")
        assert not holder.done()
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)

    # Flush asks first: no, then yes.
    answers = iter([False, True])
    asked = asyncio.Event()

    async def on_dialog(dialog: Any) -> None:
        assert "Flush the cache?" in dialog.message
        await (dialog.accept() if next(answers) else dialog.dismiss())
        asked.set()

    page.on("dialog", on_dialog)
    await page.click("#flush")
    await asyncio.wait_for(asked.wait(), 5)
    assert server.gateway.cache.stats()["entries"] == 3
    await page.click("#flush")
    await page.locator("#t-cache", has_text="0 entries").wait_for()
    assert errors == []


async def test_the_page_asks_for_a_key_and_shows_what_that_key_may_see(start_server, browser, keys):
    server = await start_server(auth__keys=tuple(entry for _, entry in keys.values()))
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await page.goto(server.url + "/dashboard")
    await page.locator("#key-form").wait_for()
    await page.fill("#key-input", "not-a-key")
    await page.click("#key-form button")
    await page.locator("#key-error", has_text="not valid").wait_for()
    await page.fill("#key-input", keys["ada"][0])
    await page.click("#key-form button")
    await page.locator("#status", has_text="live").wait_for()
    await page.locator("#viewer", has_text="key: ada").wait_for()
    assert await page.is_hidden("#flush")  # clearing the cache needs an admin key
    # The playground works with the key, in the page's phone-width layout.
    await page.locator("#model option").first.wait_for(state="attached")
    await page.fill("#message", "hello")
    await page.click("#send")
    await page.locator("#chat-meta .badge").wait_for()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390


# -- Ollama hosts


async def _two_hosts_one_failing(start_sim, start_server) -> tuple[Server, list[Any]]:
    """Two hosts, the second told to fail (a 503 on every call) and re-read: it is down."""
    sims = [await start_sim(models=("llama3.2", "qwen3:4b")), await start_sim(models=("phi3",))]
    server = await start_server(
        ollama__hosts=[{"url": sims[0].url, "max_concurrent": 3}, {"url": sims[1].url}]
    )
    async with aiohttp.ClientSession() as http:
        fault = {"mode": "error", "status": 503}
        async with http.post(f"{sims[1].url}/simulator/fault", json=fault) as r:
            assert r.status == 200
    await server.gateway.hosts.refresh()
    return server, sims


async def test_the_feed_shows_each_host_its_state_load_and_models(start_sim, start_server, http):
    server, sims = await _two_hosts_one_failing(start_sim, start_server)
    hosts = (await feed_frames(http, server.url, 1))[0]["hosts"]
    assert [h["url"] for h in hosts] == [sims[0].url, sims[1].url]
    up, down = hosts
    assert (up["state"], up["running"], up["max_concurrent"]) == ("up", 0, 3)
    assert up["models"] == ["llama3.2:latest", "qwen3:4b"]
    assert down["state"] == "down" and "503" in down["last_error"]


async def test_the_page_shows_each_host(start_sim, start_server, browser):
    server, sims = await _two_hosts_one_failing(start_sim, start_server)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(server.url + "/dashboard")
    up = page.locator(f'#hosts tr[data-url="{sims[0].url}"]')
    await up.locator(".badge.up").wait_for()
    assert await up.locator("td.running").text_content() == "0 / 3"
    assert await up.locator("td.models").text_content() == "2 installed"
    assert await up.locator("td.models").get_attribute("title") == "llama3.2:latest\nqwen3:4b"
    down = page.locator(f'#hosts tr[data-url="{sims[1].url}"]')
    await down.locator(".badge.down").wait_for()
    assert "503" in (await down.locator("td.state").text_content() or "")

    # It comes back: the page says so with the next frame.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sims[1].url}/simulator/fault", json={"mode": "none"}) as r,
    ):
        assert r.status == 200
    await server.gateway.hosts.refresh()
    await down.locator(".badge.up").wait_for()
    assert await down.locator("td.models").text_content() == "1 installed"
    assert errors == []
