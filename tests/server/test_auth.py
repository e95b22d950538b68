"""A gateway a team can share: API keys, an admin role, tickets that belong to their key, fair
turns between users, per-user limits and a per-key cache scope."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import openai
import pytest

from server import auth
from server import config as cfg
from server.logs import LogBuffer
from tests.conftest import ROOT, Server, user

CHAT = "/api/chat-optimized"


@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    """name → (key, stored entry), for an admin, two users and a batch key."""
    return {
        name: auth.new_key(name, role)
        for name, role in (("root", "admin"), ("ada", "user"), ("bob", "user"), ("etl", "batch"))
    }


async def keyed_server(start_server, keys, **overrides) -> Server:
    return await start_server(auth__keys=tuple(entry for _, entry in keys.values()), **overrides)


def bearer(keys, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[name][0]}"}


async def ask(http, server: Server, headers: dict[str, str], text: str = "hi", **extra):
    async with http.post(
        server.url + CHAT,
        json={"messages": user(text), "stream": False, **extra},
        headers=headers,
    ) as r:
        return r.status, dict(r.headers), await r.json()


def test_a_non_loopback_address_without_keys_refuses_to_start():
    exposed = cfg.load(None, env={}, overrides={("server", "host"): "0.0.0.0"})
    with pytest.raises(auth.Exposed) as info:
        auth.check_exposure(exposed)
    assert "without API keys" in info.value.strerror
    # On purpose, or with keys, or on loopback: fine.
    auth.check_exposure(
        cfg.load(
            None,
            env={},
            overrides={("server", "host"): "0.0.0.0", ("auth", "allow_anonymous"): True},
        )
    )
    auth.check_exposure(cfg.load(None, env={}))
    # The command says so and exits 2, before binding anything.
    result = subprocess.run(
        [sys.executable, "-m", "server", "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr


async def test_without_a_valid_key_every_api_answers_401_in_its_own_shape(start_server, keys, http):
    server = await keyed_server(start_server, keys)
    status, headers, body = await ask(http, server, {})
    assert status == 401 and body["code"] == "unauthorized"
    assert headers["WWW-Authenticate"] == "Bearer"
    async with http.post(
        server.url + "/api/chat", json={"model": "llama3.2", "messages": user()}
    ) as r:
        assert r.status == 401 and set(await r.json()) == {"error"}
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="cbk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="llama3.2", messages=user())
    # Liveness stays open.
    async with http.get(server.url + "/health") as r:
        assert r.status == 200


async def test_a_key_works_as_bearer_and_as_x_api_key_and_is_never_logged(start_server, keys, http):
    server = await keyed_server(start_server, keys)
    logs = LogBuffer().attach()
    logging.getLogger("chatbot").setLevel(logging.DEBUG)
    try:
        assert (await ask(http, server, bearer(keys, "ada")))[0] == 200
        assert (await ask(http, server, {"X-API-Key": keys["bob"][0]}, "other"))[0] == 200
        assert (await ask(http, server, {"Authorization": "Bearer cbk_nope"}))[0] == 401
        lines = "\n".join(logs.lines)
    finally:
        logs.detach()
    assert keys["ada"][0] not in lines and keys["bob"][0] not in lines
    assert "cbk_nope" not in lines
    users = server.gateway.snapshot()["users"]
    assert users["ada"]["requests"] == 1 and users["bob"]["requests"] == 1  # by name


async def test_admin_actions_need_an_admin_key(start_server, keys, http):
    server = await keyed_server(start_server, keys)
    for name, status in (("ada", 403), ("root", 200)):
        async with http.post(
            server.url + "/api/cache-stats", json={"action": "clear"}, headers=bearer(keys, name)
        ) as r:
            assert r.status == status
    async with http.post(
        server.url + "/api/pull", json={"model": "x"}, headers=bearer(keys, "ada")
    ) as r:
        assert r.status == 403 and "admin" in (await r.json())["error"]
    async with http.get(server.url + "/api/cache-stats", headers=bearer(keys, "ada")) as r:
        assert r.status == 200  # reading figures is for everyone with a key


async def test_a_ticket_belongs_to_its_key(start_server, start_sim, keys, http):
    slow = await start_sim(token_delay_ms=30, tokens=40)
    server = await keyed_server(start_server, keys, ollama__api_url=slow.url)
    async with http.post(
        server.url + "/api/chat-queue",
        json={"messages": user(), "request_id": "ada-1"},
        headers=bearer(keys, "ada"),
    ) as r:
        assert r.status == 200
    for name, status in (("bob", 404), ("ada", 200), ("root", 200)):
        async with http.get(
            server.url + "/api/chat-queue?requestId=ada-1", headers=bearer(keys, name)
        ) as r:
            assert r.status == status, name
    async with http.delete(
        server.url + "/api/chat-queue?requestId=ada-1", headers=bearer(keys, "bob")
    ) as r:
        assert r.status == 404  # bob cannot cancel it
    async with http.delete(
        server.url + "/api/chat-queue?requestId=ada-1", headers=bearer(keys, "ada")
    ) as r:
        assert r.status == 200 and (await r.json())["status"] == "cancelled"


async def test_users_take_turns_in_the_queue(start_server, start_sim, keys, http):
    slow = await start_sim(token_delay_ms=5, tokens=6)
    server = await keyed_server(
        start_server, keys, ollama__api_url=slow.url, queue__max_concurrent=1
    )
    finished: list[str] = []

    async def one(name: str, i: int) -> None:
        status, _, _ = await ask(http, server, bearer(keys, name), f"{name} question {i}")
        assert status == 200
        finished.append(name)

    ada = [asyncio.ensure_future(one("ada", i)) for i in range(20)]
    await asyncio.sleep(0.1)  # ada's 20 are in: one running, the rest waiting
    done_before = len(finished)
    assert done_before < 19  # ada still has a backlog when bob comes
    await one("bob", 0)
    await asyncio.gather(*ada)
    # bob waited for the one of ada's that was running when he came, and no more.
    assert finished.index("bob") - done_before <= 1, (done_before, finished)


async def test_a_batch_key_goes_after_interactive_work(start_server, start_sim, keys, http):
    slow = await start_sim(token_delay_ms=5, tokens=6)
    server = await keyed_server(
        start_server, keys, ollama__api_url=slow.url, queue__max_concurrent=1
    )
    finished: list[str] = []

    async def one(name: str, i: int) -> None:
        await ask(http, server, bearer(keys, name), f"{name} {i}")
        finished.append(name)

    jobs = [asyncio.ensure_future(one("etl", i)) for i in range(4)]
    await asyncio.sleep(0.01)
    done_before = len(finished)
    jobs += [asyncio.ensure_future(one("ada", i)) for i in range(2)]
    await asyncio.gather(*jobs)
    # ada's two go right after the batch job that was running when they came.
    assert finished[done_before : done_before + 3].count("ada") == 2, (done_before, finished)


async def test_per_user_limits_answer_429_with_retry_after(start_server, start_sim, keys, http):
    server = await keyed_server(start_server, keys, auth__requests_per_minute_per_user=2)
    assert (await ask(http, server, bearer(keys, "ada"), "a"))[0] == 200
    assert (await ask(http, server, bearer(keys, "ada"), "b"))[0] == 200
    status, headers, body = await ask(http, server, bearer(keys, "ada"), "c")
    assert status == 429 and body["code"] == "too_many_requests"
    assert int(headers["Retry-After"]) >= 1
    assert (await ask(http, server, bearer(keys, "bob"), "c"))[0] == 200  # bob has his own

    slow = await start_sim(token_delay_ms=40, tokens=20)
    waiting = await keyed_server(
        start_server,
        keys,
        ollama__api_url=slow.url,
        queue__max_concurrent=1,
        auth__max_waiting_per_user=2,
    )
    first = [
        asyncio.ensure_future(ask(http, waiting, bearer(keys, "ada"), f"w{i}")) for i in range(3)
    ]
    await asyncio.sleep(0.15)  # one running, two waiting
    status, headers, _ = await ask(http, waiting, bearer(keys, "ada"), "one too many")
    assert status == 429 and headers["Retry-After"]
    assert [s for s, _, _ in await asyncio.gather(*first)] == [200, 200, 200]


@pytest.mark.parametrize(("scope", "generations"), [("shared", 1), ("per_key", 2)])
async def test_cache_scope(start_server, sim, keys, http, scope, generations):
    server = await keyed_server(start_server, keys, cache__scope=scope)
    before = (await sim.stats())["generations"]
    a = await ask(http, server, bearer(keys, "ada"), "the same question")
    b = await ask(http, server, bearer(keys, "bob"), "the same question")
    assert (await sim.stats())["generations"] - before == generations
    assert b[1]["X-Cache"] == ("HIT" if scope == "shared" else "MISS")
    assert a[2]["content"] == b[2]["content"]
    # Each key still gets its own repeats from the cache.
    assert (await ask(http, server, bearer(keys, "bob"), "the same question"))[1][
        "X-Cache"
    ] == "HIT"


def test_keys_from_the_command_line(tmp_path):
    path = tmp_path / "config.toml"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server", "keys", "--config", str(path), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    made = cli("create", "ada", "--role", "admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("cbk_") and "only time it is shown" in made.stderr
    text = path.read_text()
    assert key not in text and f"ada:admin:sha256:{auth.digest(key)}" in text
    who = auth.KeyRing(cfg.load(path, env={}).auth.keys).identify(key)
    assert who is not None and who.name == "ada" and who.admin
    assert cli("create", "ada").returncode == 1  # one key per name
    assert cli("list").stdout == "ada\tadmin\n"
    assert cli("revoke", "ada").returncode == 0
    assert cfg.load(path, env={}).auth.keys == ()
