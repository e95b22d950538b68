"""The web dashboard in headless Firefox (Debian's `firefox-esr`), driven over WebDriver BiDi,
the protocol Firefox itself serves: a websocket, spoken here with aiohttp. No driver to install,
no browser download."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import user
from tests.server.test_web_dashboard import CHAT, _chat

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
# Keep a test profile quiet and offline: no updates, telemetry, remote settings or first-run pages.
PREFS = {
    "app.update.disabledForTesting": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "services.settings.server": "http://127.0.0.1:1/dummy",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.region.network.url": "",
}
LISTENING = re.compile(rb"WebDriver BiDi listening on (ws://\S+)")


class Firefox:
    """One top-level browsing context, driven over a WebDriver BiDi session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.context = ""
        self.errors: list[str] = []
        self.prompts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._replies:
                self._replies.pop(data["id"]).set_result(data)
            elif data.get("method") == "log.entryAdded":
                entry = data["params"]
                if entry.get("type") == "javascript" and entry.get("level") == "error":
                    self.errors.append(entry.get("text", ""))
            elif data.get("method") == "browsingContext.userPromptOpened":
                self.prompts.put_nowait(data["params"])

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        reply = self._replies[self._next_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": self._next_id, "method": method, "params": params})
        data = await asyncio.wait_for(reply, 30)
        if data.get("type") == "error":
            raise AssertionError(f"{method}: {data['error']}: {data.get('message')}")
        return data["result"]

    async def start(self) -> None:
        await self.send(
            "session.new",
            capabilities={"alwaysMatch": {"unhandledPromptBehavior": {"default": "ignore"}}},
        )
        await self.send(
            "session.subscribe", events=["log.entryAdded", "browsingContext.userPromptOpened"]
        )
        tree = await self.send("browsingContext.getTree", maxDepth=0)
        self.context = tree["contexts"][0]["context"]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("session.end"), 5)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def goto(self, url: str, width: int, height: int) -> str:
        await self.send(
            "browsingContext.setViewport",
            context=self.context,
            viewport={"width": width, "height": height},
        )
        result = await self.send(
            "browsingContext.navigate", context=self.context, url=url, wait="interactive"
        )
        return str(result["url"])

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of an expression (awaited if it is a promise) in the page."""
        result = await self.send(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
        )
        if result["type"] == "exception":
            raise AssertionError(f"{expression}: {result['exceptionDetails']['text']}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def wait(self, condition: str, ms: int = 10_000) -> Any:
        """Wait, inside the page, until an expression is truthy; return its value."""
        try:
            return await self._wait(condition, ms)
        except AssertionError:
            raise AssertionError(f"never true in {ms} ms: {condition}") from None

    async def _wait(self, condition: str, ms: int) -> Any:
        return await self.evaluate(
            f"""new Promise((resolve, reject) => {{
                const start = performance.now();
                const check = () => {{
                    const value = ({condition});
                    if (value) resolve(value);
                    else if (performance.now() - start > {ms}) reject(new Error("timeout"));
                    else setTimeout(check, 25);
                }};
                check();
            }})"""
        )

    async def text(self, selector: str) -> str:
        return str(
            await self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")
        )

    async def wait_text(self, selector: str, text: str) -> None:
        element = f"document.querySelector({json.dumps(selector)})"
        found = f"{element}?.textContent.includes({json.dumps(text)})"
        try:
            await self.wait(found)
        except AssertionError:
            shown = await self.evaluate(f"{element}?.textContent")
            raise AssertionError(f"{selector} never showed {text!r}; it shows {shown!r}") from None

    async def _element(self, selector: str) -> dict[str, Any]:
        result = await self.send(
            "script.evaluate",
            expression=f"document.querySelector({json.dumps(selector)})",
            target={"context": self.context},
            awaitPromise=False,
        )
        node = result["result"]
        assert node["type"] == "node", f"no {selector}"
        return {"sharedId": node["sharedId"]}

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element, as a user makes it (scrolled to)."""
        await self.evaluate(
            f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})"
        )
        origin = {"type": "element", "element": await self._element(selector)}
        pointer = [
            {"type": "pointerMove", "x": 0, "y": 0, "origin": origin},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerUp", "button": 0},
        ]
        actions = [{"type": "pointer", "id": "mouse", "actions": pointer}]
        await self.send("input.performActions", context=self.context, actions=actions)
        await self.send("input.releaseActions", context=self.context)

    async def type(self, selector: str, text: str) -> None:
        """Click into a field and type into it key by key."""
        await self.click(selector)
        keys = []
        for char in text:
            keys += [{"type": "keyDown", "value": char}, {"type": "keyUp", "value": char}]
        actions = [{"type": "key", "id": "keyboard", "actions": keys}]
        await self.send("input.performActions", context=self.context, actions=actions)
        await self.send("input.releaseActions", context=self.context)

    async def press_ctrl_enter(self) -> None:
        ctrl, enter = "\ue009", "\ue007"
        keys = [
            {"type": "keyDown", "value": ctrl},
            {"type": "keyDown", "value": enter},
            {"type": "keyUp", "value": enter},
            {"type": "keyUp", "value": ctrl},
        ]
        actions = [{"type": "key", "id": "keyboard", "actions": keys}]
        await self.send("input.performActions", context=self.context, actions=actions)
        await self.send("input.releaseActions", context=self.context)

    async def answer_prompt(self, accept: bool) -> str:
        prompt = await asyncio.wait_for(self.prompts.get(), 5)
        await self.send(
            "browsingContext.handleUserPrompt", context=prompt["context"], accept=accept
        )
        return str(prompt["message"])


@pytest.fixture
async def firefox(tmp_path: Path) -> AsyncIterator[Firefox]:
    if not FIREFOX:
        pytest.skip("no firefox-esr (scripts/test.sh installs Debian's)")
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    )
    proc = await asyncio.create_subprocess_exec(
        FIREFOX,
        "--headless",
        "--remote-debugging-port=0",
        "--no-remote",
        "--profile",
        str(profile),
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path), "MOZ_CRASHREPORTER_DISABLE": "1"},
    )
    assert proc.stderr is not None
    try:
        url = await asyncio.wait_for(_listening(proc.stderr), 60)
        # Firefox keeps logging to stderr: keep reading it, so it never blocks on a full pipe.
        drain = asyncio.create_task(_drain(proc.stderr))
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url + "/session", max_msg_size=0) as ws,
        ):
            browser = Firefox(ws)
            await browser.start()
            yield browser
            await browser.close()
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _listening(stderr: asyncio.StreamReader) -> str:
    seen = b""
    while line := await stderr.readline():
        seen += line
        if found := LISTENING.search(line):
            return found.group(1).decode()
    raise AssertionError(f"firefox exited before listening:\n{seen.decode(errors='replace')}")


async def _drain(stderr: asyncio.StreamReader) -> None:
    while await stderr.readline():
        pass


async def test_the_page_in_firefox_tiles_playground_cancel_and_flush(
    start_server, http: aiohttp.ClientSession, firefox: Firefox
):
    server = await start_server(queue__max_concurrent=1)
    assert await firefox.goto(server.url + "/", 1280, 900) == server.url + "/dashboard"
    await firefox.wait_text("#status", "live")
    await firefox.wait_text("#t-cache", "0 entries")

    # The tiles, the charts and the recent requests follow the traffic.
    for text in ("a", "b", "a"):
        async with http.post(server.url + CHAT, json={"messages": user(text), "stream": False}):
            pass
    await firefox.wait_text("#t-cache", "2 entries")
    await firefox.wait_text("#t-hit-sub", "1 hits · 2 misses")
    await firefox.wait("document.querySelectorAll('#recent tbody tr').length === 3")
    assert await firefox.evaluate("document.querySelectorAll('#c-hit polyline').length") == 1

    # The playground streams an answer, then says it was a hit the second time.
    await firefox.wait("document.querySelector('#model option')")
    await firefox.type("#message", "Why is the sky blue?")
    await firefox.click("#send")
    await firefox.wait("document.querySelector('#chat-meta .badge.miss')")
    answer = await firefox.text("#answer")
    assert len(answer.split()) >= 3
    assert "TTFT" in await firefox.text("#chat-meta")
    await firefox.click("#message")
    await firefox.press_ctrl_enter()  # the keyboard shortcut sends too
    await firefox.wait("document.querySelector('#chat-meta .badge.hit')")
    assert await firefox.text("#answer") == answer

    # A queued request is cancelled from the queue table; its client hears it.
    slow = {"sim_tokens": 2000, "sim_token_delay_ms": 5}
    holder = asyncio.create_task(_chat(http, server, "hold", "r-holder", options=slow))
    waiter = asyncio.create_task(_chat(http, server, "wait", "r-waiter", options=slow))
    row = '#queue tr[data-request-id="r-waiter"]'
    try:
        await firefox.wait(f"document.querySelector('{row}')?.textContent.includes('queued')")
        await firefox.click(f"{row} button.cancel")
        frames = await asyncio.wait_for(waiter, 10)
        assert frames[-1]["code"] == "cancelled", frames[-1]
        await firefox.wait(f"!document.querySelector('{row}')")
        assert not holder.done()
        # Stop abandons a playground request while it waits (an aborted streamed fetch).
        await firefox.type("#message", " again")
        await firefox.click("#send")
        await firefox.wait_text("#chat-meta", "queued: position 1")
        await firefox.click("#stop")
        await firefox.wait_text("#chat-meta", "stopped")
        assert await firefox.evaluate("document.querySelector('#send').disabled") is False
        assert not holder.done()
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)

    # Flush asks first: no, then yes. (The click returns once the prompt is answered.)
    for accept in (False, True):
        clicking = asyncio.create_task(firefox.click("#flush"))
        assert "Flush the cache?" in await firefox.answer_prompt(accept)
        await clicking
        if not accept:
            assert server.gateway.cache.stats()["entries"] == 3
    await firefox.wait_text("#t-cache", "0 entries")
    assert firefox.errors == []


async def test_the_page_in_firefox_at_phone_width(start_server, firefox: Firefox):
    server = await start_server()
    await firefox.goto(server.url + "/dashboard", 390, 844)
    await firefox.wait_text("#status", "live")
    await firefox.wait("document.querySelector('#model option')")
    await firefox.type("#message", "hello")
    await firefox.click("#send")
    await firefox.wait("document.querySelector('#chat-meta .badge')")
    assert await firefox.evaluate("document.documentElement.scrollWidth") <= 390
    assert firefox.errors == []
