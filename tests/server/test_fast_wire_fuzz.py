"""Property-based, differential: any request the wire path might see (headers of any case,
order, spacing and value, duplicated, missing or odd framing, other versions and paths) gets
the same answer from a gateway with the wire path as from one without it.

Two gateways in front of one simulator run on their own event loop in a thread; each example
is sent, byte for byte the same, to both on a fresh connection, and the first responses must
agree: status, X-Cache, the header names and values (but the date, ids and lengths), and the
JSON body (but each request's own fields)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import simulator
from server.gateway import Gateway
from server.lifecycle import ServerHost
from tests.conftest import Threaded, make_config

PATHS = [
    "/api/chat-optimized",
    "/api/chat",
    "/api/generate",
    "/v1/chat/completions",
    "/v1/completions",
]
BODIES = {
    "/api/chat-optimized": {"messages": [{"role": "user", "content": "fuzz"}], "stream": False},
    "/api/chat": {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "fuzz"}],
        "stream": False,
    },
    "/api/generate": {"model": "llama3.2", "prompt": "fuzz", "stream": False},
    "/v1/chat/completions": {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "fuzz"}],
    },
    "/v1/completions": {"model": "llama3.2", "prompt": "fuzz"},
}
OWN_FIELDS = {"request_id", "id", "created", "created_at", "total_duration", "eval_duration"}
OWN_HEADERS = {"date", "x-request-id", "content-length"}
VALUES: dict[str, list[str]] = {
    "Host": ["127.0.0.1", "localhost:8080", "[::1]:80", "evil.example", "", "LOCALHOST"],
    "Content-Type": ["application/json", "text/plain", ""],
    "Accept": ["*/*", "application/json", "text/event-stream", ""],
    "Accept-Encoding": ["gzip, deflate", "br", "identity"],
    "User-Agent": ["ollama-python/0.4", "OpenAI/Python 1.0", "x" * 300],
    "Connection": ["keep-alive", "Keep-Alive", "close", "upgrade", ""],
    "Authorization": ["Bearer cbk_nope", "Basic abc", ""],
    "X-API-Key": ["cbk_nope", ""],
    "X-User": ["ada", " bob ", "", "ünï"],
    "Origin": ["http://app.example", "http://evil.example"],
    "Cache-Control": ["no-cache", "no-store", "max-age=0"],
    "X-Request-Id": ["mine-1", "", "x" * 200],
    "X-Stainless-Lang": ["python"],
    "Content-Encoding": ["gzip", "identity"],
    "X-Trace": ["1"],
    "Accept-Language": ["en"],
    "Transfer-Encoding": ["chunked", "identity"],
}
SETTINGS = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def gateways() -> Iterator[tuple[int, int]]:
    side = Threaded()
    sim_settings = simulator.SimulatorSettings(tokens=3, token_delay_ms=0, first_token_delay_ms=0)
    sim_runner, sim_port = side.run(simulator.start(sim_settings))
    hosts = []
    for _ in range(2):
        config = make_config(
            ollama__api_url=f"http://127.0.0.1:{sim_port}",
            ollama__warm_up=False,
            auth__user_header="X-User",
            cors__allowed_origins=("http://app.example",),
            server__body_timeout_seconds=1,
            server__header_timeout_seconds=1,
        )
        host = ServerHost(Gateway(config), port_override=0, drain_seconds=1)
        side.run(host.start())
        hosts.append(host)
    with_wire, without = hosts
    assert without.wire_hits is not None
    without.wire_hits.recipes = {}  # it answers nothing: every request goes the usual way
    try:
        for host in hosts:  # each body once, then a hit that teaches the memo
            for path, body in BODIES.items():
                for _ in range(2):
                    status, _, _ = exchange(host.port or 0, request(path, body, []))
                    assert status == 200
        yield with_wire.port or 0, without.port or 0
        # Enough of the examples were the wire path's to make the comparison mean something.
        assert with_wire.wire_hits is not None and with_wire.wire_hits.answered > 200
    finally:
        for host in hosts:
            side.run(host.stop())
        side.run(sim_runner.cleanup())
        side.close()


def request(
    path: str,
    body: Any,
    headers: list[tuple[str, str]],
    *,
    version: str = "HTTP/1.1",
    length: str = "right",
    separator: str = ": ",
) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} {version}"]
    if not any(name.lower() == "host" for name, _ in headers):
        lines.append("Host: 127.0.0.1")
    lines += [f"{name}{separator}{value}" for name, value in headers]
    if length == "right":
        lines.append(f"Content-Length: {len(data)}")
    elif length == "twice":
        lines += [f"Content-Length: {len(data)}"] * 2
    elif length == "two values":
        lines += [f"Content-Length: {len(data)}", f"Content-Length: {len(data) + 1}"]
    elif length == "padded":
        lines.append(f"Content-Length:  0{len(data)} ")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + data


def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """The first response to `data` on a fresh connection: status (0: none came), headers,
    body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        stream = sock.makefile("rb")
        try:
            status_line = stream.readline()
        except TimeoutError:
            return 0, {}, b""
        if not status_line:
            return 0, {}, b""
        headers: dict[str, str] = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        return int(status_line.split()[1]), headers, stream.read(length)


def _cases(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper()])


def _header(
    pool: dict[str, list[str]], often: tuple[str, ...] = ()
) -> st.SearchStrategy[tuple[str, str]]:
    names = sorted(pool) + [name for name in often for _ in range(3)]
    return st.sampled_from(names).flatmap(
        lambda name: st.tuples(_cases(name), st.sampled_from(pool[name]))
    )


# The headers whose every value the wire path must get right: tried more often.
SIGNIFICANT = ("Host", "Connection", "Origin", "Cache-Control", "X-Request-Id", "X-User")


# What clients usually send, which the wire path answers; and anything at all, now and then.
TYPICAL = {
    "Content-Type": ["application/json"],
    "Accept": ["*/*", "application/json"],
    "Accept-Encoding": ["gzip, deflate"],
    "User-Agent": ["ollama-python/0.4", "OpenAI/Python 1.0"],
    "Connection": ["keep-alive", "Keep-Alive"],
    "X-User": ["ada"],
    "X-Stainless-Lang": ["python"],
}
headers_sent = st.tuples(
    st.lists(_header(TYPICAL), max_size=4, unique_by=lambda h: h[0].lower()),
    st.one_of(st.just([]), st.lists(_header(VALUES, SIGNIFICANT), min_size=1, max_size=2)),
).flatmap(lambda parts: st.permutations(parts[0] + parts[1]))


def comparable(status: int, headers: dict[str, str], body: bytes) -> Any:
    fields: Any = body
    if headers.get("x-cache") == "MISS":
        fields = None  # a generation each (Cache-Control): its timings are its own
    elif headers.get("content-type", "").startswith("application/json") and body:
        data = json.loads(body)
        fields = {k: v for k, v in data.items() if k not in OWN_FIELDS}
    return status, {k: v for k, v in headers.items() if k not in OWN_HEADERS}, fields


@SETTINGS
@given(
    path=st.sampled_from(PATHS),
    query=st.sampled_from([""] * 5 + ["?x=1"]),
    headers=headers_sent,
    version=st.sampled_from(["HTTP/1.1"] * 5 + ["HTTP/1.0"]),
    length=st.sampled_from(["right"] * 6 + ["twice", "two values", "padded"]),
    separator=st.sampled_from([": "] * 3 + [":", ":\t", " : "]),
)
def test_the_wire_path_answers_as_the_usual_way(
    gateways, path, query, headers, version, length, separator
):
    with_wire, without = gateways
    data = request(
        path + query, BODIES[path], headers, version=version, length=length, separator=separator
    )
    got = comparable(*exchange(with_wire, data))
    expected = comparable(*exchange(without, data))
    assert got == expected, data
