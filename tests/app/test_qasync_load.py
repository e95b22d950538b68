"""≥ 10,000 requests through the server on the qasync loop.

PySide6 6.12.0 on Python 3.11 drops a reference to None on every qasync callback, and an aiohttp
server on such a loop aborts the whole process ("Fatal Python error: none_dealloc") after a few
thousand requests. pyproject excludes that release; this test makes sure no future one brings the
bug back unseen: if it does, this process dies and the suite fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

CLIENT = r"""
import asyncio, json, sys
import aiohttp

URL, TOTAL, WORKERS = sys.argv[1], int(sys.argv[2]), 8
BODY = {"messages": [{"role": "user", "content": "load"}], "stream": False}

async def main():
    ok = 0
    counter = iter(range(TOTAL))
    async with aiohttp.ClientSession() as s:
        async def worker():
            nonlocal ok
            for i in counter:
                # Alternate a cache hit and the stats endpoint the dashboard-less clients poll.
                if i % 2:
                    async with s.get(URL + "/api/cache-stats") as r:
                        ok += r.status == 200
                        await r.read()
                else:
                    async with s.post(URL + "/api/chat-optimized", json=BODY) as r:
                        ok += r.status == 200 and r.headers.get("X-Cache") == "HIT"
                        await r.read()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    print(json.dumps({"ok": ok}))

asyncio.run(main())
"""


def test_ten_thousand_requests_on_the_qasync_loop(start_app, run, qtbot):
    app = start_app(tray=True)
    app.companion.dashboard.show()  # the dashboard repaints while the load runs

    async def warm() -> None:
        import aiohttp

        async with (
            aiohttp.ClientSession() as s,
            s.post(
                app.url + "/api/chat-optimized",
                json={"messages": [{"role": "user", "content": "load"}], "stream": False},
            ) as r,
        ):
            assert r.status == 200

    run(warm())
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, app.url, "10000"], stdout=subprocess.PIPE, text=True
    )
    try:
        qtbot.waitUntil(lambda: proc.poll() is not None, timeout=300_000)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert json.loads(proc.stdout.read())["ok"] == 10_000
    assert app.controller.gateway.cache.stats()["hits"] >= 5000
    # Nearly all of them answered on the wire (server/fast_wire.py), on the qasync loop too.
    wire = app.controller.host.wire_hits
    assert wire is not None and wire.answered >= 4000
