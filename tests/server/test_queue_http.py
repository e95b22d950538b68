"""The queue as clients see it: concurrency limit, queued frames, 503, tickets, cancel, priority."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import Server, user, wait_for

CHAT = "/api/chat-optimized"
QUEUE = "/api/chat-queue"


class Streamer:
    """A browser tab: one streamed chat request, its frames collected as they arrive."""

    def __init__(self, server: Server, body: dict[str, Any]) -> None:
        self.frames: list[dict[str, Any]] = []
        self.status = 0
        self._session = aiohttp.ClientSession()
        self.task = asyncio.create_task(self._run(server, body))

    async def _run(self, server: Server, body: dict[str, Any]) -> None:
        async with self._session.post(server.url + CHAT, json=body) as resp:
            self.status = resp.status
            async for line in resp.content:
                if line.strip():
                    self.frames.append(json.loads(line.decode()[6:]))

    @property
    def content(self) -> str:
        return "".join(f.get("content") or "" for f in self.frames)

    @property
    def queued(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("queued")]

    @property
    def done(self) -> bool:
        return bool(self.frames) and self.frames[-1].get("done") is True

    async def finish(self) -> None:
        await asyncio.wait_for(self.task, 30)
        await self._session.close()

    async def leave(self) -> None:
        self.task.cancel()
        await self._session.close()


def slow(text: str, tokens: int = 20, delay: int = 20) -> dict[str, Any]:
    return {"messages": user(text), "options": {"sim_tokens": tokens, "sim_token_delay_ms": delay}}


async def until(predicate, timeout: float = 5.0) -> None:
    async def check() -> bool:
        return bool(predicate())

    assert await wait_for(check, timeout=timeout), "condition not reached"


async def _post_json(http, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as r:
        assert r.status == 200
        return await r.json()


async def get_ticket(http, server: Server, rid: str) -> tuple[int, dict[str, Any]]:
    async with http.get(server.url + QUEUE, params={"requestId": rid}) as r:
        return r.status, await r.json()


async def test_never_more_than_max_concurrent_upstream(start_sim, start_server, http):
    sim = await start_sim(tokens=10, token_delay_ms=5)
    server = await start_server(ollama__api_url=sim.url, queue__max_concurrent=2)

    async def one(i: int) -> dict[str, Any]:
        async with http.post(
            server.url + CHAT, json={"messages": user(f"q{i}"), "stream": False}
        ) as r:
            assert r.status == 200
            return await r.json()

    answers = await asyncio.gather(*(one(i) for i in range(20)))
    assert all(a["done"] and a["stats"]["eval_count"] == 10 for a in answers)
    stats = await sim.stats()
    assert stats["max_in_progress"] == 2
    assert stats["completed"] == 20
    queue = server.gateway.snapshot()["queue"]
    assert queue["completed"] == 20 and queue["active"] == 0 and queue["waiting"] == 0
    assert queue["avg_wait_ms"] > 0 and queue["avg_generation_ms"] > 0


async def test_waiting_stream_hears_position_and_eta_then_its_answer(server, sim):
    first = Streamer(server, slow("first", tokens=40))
    await until(lambda: first.frames)
    second = Streamer(server, {"messages": user("second")})
    third = Streamer(server, {"messages": user("third")})
    await until(lambda: third.queued)
    # Before any generation was measured, the ETA uses estimated_time_per_request_ms (30 s).
    assert second.queued[0]["position"] == 1
    assert second.queued[0]["estimated_wait_ms"] == 30000
    assert third.queued[0] == {
        "queued": True,
        "position": 2,
        "estimated_wait_ms": 60000,
        "done": False,
        "request_id": third.queued[0]["request_id"],
    }
    for s in (first, second, third):
        await s.finish()
        assert s.done and s.frames[-1]["cached"] is False
    # The third moved up when the first finished, and heard it.
    assert [f["position"] for f in third.queued] == [2, 1]
    assert not any(f.get("queued") for f in third.frames[len(third.queued) :])
    assert third.frames[-1]["stats"]["queue_ms"] > 0


async def test_full_queue_is_503_with_retry_after(start_server, http):
    server = await start_server(queue__max_queue_size=1)
    running = Streamer(server, slow("running", tokens=30))
    waiting = Streamer(server, {"messages": user("waiting")})
    await until(lambda: waiting.queued)
    async with http.post(server.url + CHAT, json={"messages": user("third")}) as r:
        assert r.status == 503
        assert int(r.headers["Retry-After"]) >= 1
        data = await r.json()
    assert data["code"] == "queue_full" and "max_queue_size = 1" in data["error"]
    assert server.gateway.snapshot()["queue"]["rejected"] == 1
    await running.finish()
    await waiting.finish()
    assert waiting.done


async def test_ticket_lifecycle(server, http):
    running = Streamer(server, slow("running", tokens=30))
    await until(lambda: running.frames)
    async with http.post(server.url + QUEUE, json={"messages": user(), "requestId": "t-1"}) as r:
        assert r.status == 200
        ticket = await r.json()
    assert ticket == {
        "success": True,
        "requestId": "t-1",
        "position": 1,
        "estimatedWaitTime": 30000,
        "status": "queued",
        "queueLength": 1,
    }
    assert (await get_ticket(http, server, "t-1"))[1]["status"] == "queued"

    claim = Streamer(server, {"messages": user(), "request_id": "t-1"})
    await until(lambda: claim.queued)
    assert claim.queued[0]["position"] == 1  # it kept the ticket's place
    await running.finish()
    await claim.finish()
    assert claim.done
    status, data = await get_ticket(http, server, "t-1")
    assert status == 200 and data["status"] == "completed" and data["position"] == 0


async def test_ticket_for_a_free_slot_is_processing(server, http):
    async with http.post(server.url + QUEUE, json={"messages": user()}) as r:
        ticket = await r.json()
    assert ticket["status"] == "processing" and ticket["position"] == 0
    assert ticket["requestId"].startswith("r-")
    async with http.post(
        server.url + CHAT,
        json={"messages": user(), "stream": False, "requestId": ticket["requestId"]},
    ) as r:
        assert (await r.json())["request_id"] == ticket["requestId"]


async def test_unclaimed_ticket_expires_and_gives_its_place_back(start_server, http):
    server = await start_server(queue__ticket_ttl_seconds=1)
    async with http.post(server.url + QUEUE, json={"messages": user(), "requestId": "t-x"}) as r:
        assert (await r.json())["status"] == "processing"  # it holds the only slot
    waiting = Streamer(server, {"messages": user("next")})
    await until(lambda: waiting.queued)
    await waiting.finish()  # served once the ticket expired
    assert waiting.done
    assert (await get_ticket(http, server, "t-x"))[1]["status"] == "expired"


@pytest.mark.parametrize(
    ("method", "params", "status", "code"),
    [
        ("get", {"requestId": "nope"}, 404, "not_found"),
        ("delete", {"requestId": "nope"}, 404, "not_found"),
        ("get", {}, 400, "invalid_requestId"),
        ("delete", {}, 400, "invalid_requestId"),
    ],
)
async def test_ticket_lookup_errors(server, http, method, params, status, code):
    async with getattr(http, method)(server.url + QUEUE, params=params) as r:
        assert r.status == status
        data = await r.json()
    assert data["code"] == code
    assert ("nope" in data["error"]) if status == 404 else ("requestId" in data["error"])


async def test_invalid_ticket_body_is_400(server, http):
    async with http.post(server.url + QUEUE, json={"messages": "hi"}) as r:
        assert r.status == 400
        assert (await r.json())["error"].startswith("messages: must be a list")


async def test_request_id_in_use_is_409(server, http):
    running = Streamer(server, {**slow("a", tokens=30), "request_id": "dup"})
    await until(lambda: running.frames)
    async with http.post(server.url + CHAT, json={"messages": user("b"), "request_id": "dup"}) as r:
        assert r.status == 409
        assert (await r.json())["code"] == "conflict"
    await running.finish()


async def test_cancel_while_waiting_moves_the_others_up(server, sim, http):
    running = Streamer(server, slow("running", tokens=30))
    await until(lambda: running.frames)
    a = Streamer(server, {"messages": user("a"), "request_id": "w-a"})
    await until(lambda: a.queued)
    b = Streamer(server, {"messages": user("b"), "request_id": "w-b"})
    await until(lambda: b.queued)
    assert (await get_ticket(http, server, "w-b"))[1]["position"] == 2

    async with http.delete(server.url + QUEUE, params={"requestId": "w-a"}) as r:
        assert r.status == 200
        assert (await r.json())["status"] == "cancelled"
    await a.finish()
    assert a.frames[-1]["code"] == "cancelled" and a.frames[-1]["done"] is True
    await until(lambda: len(b.queued) == 2)
    assert b.queued[-1]["position"] == 1
    await running.finish()
    await b.finish()
    assert b.done
    assert (await sim.stats())["generations"] == 2  # "a" never reached Ollama


async def test_cancel_while_running_aborts_upstream_and_frees_the_slot(server, sim, http):
    running = Streamer(server, {**slow("long", tokens=400), "request_id": "run-1"})
    await until(lambda: running.frames)
    nxt = Streamer(server, {"messages": user("next")})
    await until(lambda: nxt.queued)
    async with http.delete(server.url + QUEUE, params={"requestId": "run-1"}) as r:
        assert (await r.json())["status"] == "cancelled"

    async def upstream_cancelled() -> bool:
        return (await sim.stats())["cancelled"] == 1

    assert await wait_for(upstream_cancelled, timeout=1.0)
    await running.finish()
    assert running.frames[-1]["code"] == "cancelled"
    await nxt.finish()
    assert nxt.done
    assert (await get_ticket(http, server, "run-1"))[1]["status"] == "cancelled"
    assert server.gateway.snapshot()["queue"]["cancelled"] == 1
    # The cancelled generation was not cached; only the next one's complete answer was.
    assert server.gateway.cache.entries == 1


async def test_disconnect_while_waiting_leaves_the_queue(server, sim, http):
    running = Streamer(server, slow("running", tokens=30))
    await until(lambda: running.frames)
    leaver = Streamer(server, {"messages": user("leaver")})
    await until(lambda: leaver.queued)
    stayer = Streamer(server, {"messages": user("stayer")})
    await until(lambda: stayer.queued)
    assert stayer.queued[0]["position"] == 2
    await leaver.leave()
    await until(lambda: server.gateway.queue.waiting == 1)
    await until(lambda: len(stayer.queued) == 2)
    assert stayer.queued[-1]["position"] == 1
    await running.finish()
    await stayer.finish()
    assert (await sim.stats())["generations"] == 2


async def test_interactive_chat_overtakes_waiting_batch_work(start_server, http):
    server = await start_server(batch__batch_timeout_ms=0)
    running = Streamer(server, slow("running", tokens=60))
    await until(lambda: running.frames)
    bulk = {"requests": [{"messages": user("bulk")}]}
    batch = asyncio.create_task(_post_json(http, server.url + "/api/chat-batch", bulk))
    await until(lambda: server.gateway.queue.waiting == 1, timeout=5)
    chat = Streamer(server, {"messages": user("chat")})
    await until(lambda: chat.queued)
    assert chat.queued[0]["position"] == 1  # ahead of the batch item that came first
    await running.finish()
    await chat.finish()
    assert (await batch)["results"][0]["content"]


async def test_batch_job_finishes_under_an_interactive_flood(start_sim, start_server, http):
    sim = await start_sim(tokens=5, token_delay_ms=10)
    server = await start_server(ollama__api_url=sim.url, batch__batch_timeout_ms=0)
    stop = asyncio.Event()
    served = 0

    async def chatter(n: int) -> None:
        nonlocal served
        i = 0
        while not stop.is_set():
            i += 1
            async with http.post(
                server.url + CHAT, json={"messages": user(f"{n}-{i}"), "stream": False}
            ) as r:
                assert r.status == 200
            served += 1

    flood = [asyncio.create_task(chatter(n)) for n in range(4)]
    await until(lambda: served >= 4)
    async with http.post(
        server.url + "/api/chat-batch", json={"requests": [{"messages": user("bulk job")}]}
    ) as r:
        result = (await r.json())["results"][0]
    still_flooding = not stop.is_set() and all(not t.done() for t in flood)
    stop.set()
    await asyncio.gather(*flood)
    assert result["content"] and "error" not in result
    assert still_flooding  # it finished while interactive work kept arriving
    assert (await sim.stats())["max_in_progress"] == 1


async def test_more_slots_at_run_time_take_effect_for_waiting_requests(start_server, sim, http):
    server = await start_server()
    streams = [Streamer(server, slow(f"s{i}", tokens=25)) for i in range(4)]
    await until(lambda: server.gateway.queue.waiting == 3)
    config = server.gateway.config
    from dataclasses import replace

    server.gateway.apply_config(replace(config, queue=replace(config.queue, max_concurrent=3)))
    assert server.gateway.queue.active == 3 and server.gateway.queue.waiting == 1
    for s in streams:
        await s.finish()
        assert s.done  # nobody was dropped
    assert (await sim.stats())["max_in_progress"] == 3


async def test_waiting_stream_hears_from_the_queue_even_when_nothing_moves(server, monkeypatch):
    from server.services import generation

    monkeypatch.setattr(generation, "HEARTBEAT_S", 0.1)  # 5 s in production
    running = Streamer(server, slow("running", tokens=40))
    await until(lambda: running.frames)
    waiting = Streamer(server, {"messages": user("waiting")})
    await until(lambda: len(waiting.queued) >= 4)
    assert {f["position"] for f in waiting.queued} == {1}
    await running.finish()
    await waiting.finish()
    assert waiting.done
