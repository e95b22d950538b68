"""GET /health reports the gateway and Ollama's reachability."""

from __future__ import annotations

from server import __version__
from tests.conftest import free_port, wait_for


async def test_health_ok(server, sim, http):
    async with http.get(server.url + "/health") as r:
        assert r.status == 200
        data = await r.json()
    assert data["status"] == "ok"
    assert data["version"] == __version__
    assert data["uptime_seconds"] >= 0
    assert data["ollama"] == {"url": sim.url, "reachable": True, "version": "0.33.0"}


async def test_health_degraded_when_ollama_down(start_server, http):
    dead = f"http://127.0.0.1:{free_port()}"
    server = await start_server(ollama__api_url=dead)
    async with http.get(server.url + "/health") as r:
        assert r.status == 200
        data = await r.json()
    assert data["status"] == "degraded"
    assert data["ollama"]["reachable"] is False
    assert data["ollama"]["error"].startswith(f"Ollama not reachable at {dead}")


async def test_health_recovers_when_ollama_comes_back(start_sim, start_server, http):
    port = free_port()
    server = await start_server(
        ollama__api_url=f"http://127.0.0.1:{port}", ollama__probe_interval_seconds=1
    )
    async with http.get(server.url + "/health") as r:
        assert (await r.json())["status"] == "degraded"
    await start_sim(port=port)

    async def healthy() -> bool:
        async with http.get(server.url + "/health") as r:
            return (await r.json())["status"] == "ok"

    assert await wait_for(healthy, timeout=5.0)
