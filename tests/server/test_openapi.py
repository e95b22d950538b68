"""The OpenAPI document of the gateway's own API (server/openapi.json, served at /openapi.json):
it is valid OpenAPI 3.1, it documents exactly the routes the app registers for that API, and a
running gateway keeps to it while schemathesis throws generated requests at every operation.

The gateway and the Ollama simulator run on their own event loop in a thread, so schemathesis
drives them with its blocking HTTP client over real sockets.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server import __version__, simulator
from server.app import create_app
from server.auth import new_key
from server.gateway import Gateway
from server.lifecycle import ServerHost
from tests.conftest import ROOT, Threaded, make_config

DOCUMENT_PATH = ROOT / "server" / "openapi.json"
DOCUMENT = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Handlers of the other APIs the gateway serves, documented by their owners: Ollama's native API
# and OpenAI's. Every other route is the gateway's own API and must be in the document.
OTHER_APIS = {
    "server.handlers.native",
    "server.handlers.embed",
    "server.handlers.ollama_relay",
    "server.handlers.openai",
    # Prometheus' text format at /metrics: Prometheus defines it (README, `GET /metrics`).
    "server.metrics",
    # The web dashboard: its page's files and the page's own live feed (an endless stream, which
    # the README describes), not a part of the API clients build on.
    "server.web.dashboard",
}


def no_internal_error(ctx: Any, response: Any, case: Any) -> None:
    """A 200 can carry a failure too, in a stream's last frame or in one item of a bulk job:
    never the gateway's own internal error (a 500 in any other answer is not_a_server_error's)."""
    if response.status_code != 200:
        return
    text = response.content.decode()
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        values = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ")]
    else:
        values = [json.loads(text)]
    while values:
        value = values.pop()
        if isinstance(value, dict):
            assert value.get("code") != "internal_error", value
            values.extend(value.values())
        elif isinstance(value, list):
            values.extend(value)


CHECKS = [
    not_a_server_error,
    no_internal_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 40  # per operation, besides schemathesis' own examples and boundary cases


def test_the_document_is_valid_openapi_3_1():
    assert DOCUMENT["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(DOCUMENT).validate()  # raises, naming the first problem


def test_the_document_has_the_gateways_version():
    assert DOCUMENT["info"]["version"] == __version__


def test_every_route_of_the_gateways_own_api_is_documented_and_nothing_else():
    app = create_app(Gateway(make_config()))
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.handler.__module__ not in OTHER_APIS
    }
    documented = {
        (method, path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS
    }
    undocumented, gone = sorted(registered - documented), sorted(documented - registered)
    assert not undocumented, (
        f"served but not in server/openapi.json: {undocumented} (document them; or, if they "
        "belong to another API, name their handler module in OTHER_APIS)"
    )
    assert not gone, f"in server/openapi.json but not served: {gone}"


# -- a running gateway against the document ------------------------------------------------


@contextlib.contextmanager
def running_gateway(**overrides: Any) -> Iterator[str]:
    side = Threaded()
    sim_settings = simulator.SimulatorSettings(tokens=3, token_delay_ms=0, first_token_delay_ms=0)
    sim_runner, sim_port = side.run(simulator.start(sim_settings))
    config = make_config(
        ollama__api_url=f"http://127.0.0.1:{sim_port}",
        ollama__warm_up=False,
        queue__max_concurrent=2,
        # A ticket from POST /api/chat-queue holds its place until claimed or expired: short,
        # so the generated tickets do not make the other requests wait.
        queue__ticket_ttl_seconds=1,
        # Small, so that tickets fill the line now and then: 503 queue_full, with Retry-After.
        queue__max_queue_size=3,
        batch__batch_timeout_ms=5,
        server__max_body_kb=64,
        server__body_timeout_seconds=2,
        **overrides,
    )
    host = ServerHost(Gateway(config), port_override=0, drain_seconds=1)
    side.run(host.start())
    try:
        yield f"http://127.0.0.1:{host.port}"
    finally:
        side.run(host.stop())
        side.run(sim_runner.cleanup())
        side.close()


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with running_gateway() as url:
        yield url


@pytest.fixture(scope="module")
def keyed_gateway_url() -> Iterator[str]:
    """API keys configured, and the generated requests carry none."""
    with running_gateway(auth__keys=[new_key("ci", "admin")[1]]) as url:
        yield url


def test_the_served_document_is_the_file(gateway_url):
    with urllib.request.urlopen(f"{gateway_url}/openapi.json", timeout=10) as resp:
        assert resp.headers.get_content_type() == "application/json"
        assert resp.read() == DOCUMENT_PATH.read_bytes()


def fuzzing(examples: int, *, bulk_examples: int, coverage: bool = True) -> Any:
    """The document, loaded from the file at collection for one test per operation (pytest 9
    has no `_nodeid` for schemathesis' fixture-based loader to rename; the test above checks
    that the gateway serves this very file), and how hard to fuzz it."""
    return schemathesis.openapi.from_dict(
        DOCUMENT,
        config=schemathesis.Config.from_dict(
            {
                "request-timeout": 30,
                # A slow CI machine is no failure of the gateway's.
                "suppress-health-check": ["too_slow", "filter_too_much"],
                "generation": {"max-examples": examples, "database": "none"},
                # Generating bulk jobs of up to 100 chat bodies is slow (~0.3 s each): fewer.
                "operations": [
                    {
                        "include-path": "/api/chat-batch",
                        "generation": {"max-examples": bulk_examples},
                    }
                ],
                "phases": {"coverage": {"enabled": coverage}},
                "checks": {
                    # The 5xx the document promises where they apply (Ollama failed or timed
                    # out, a full queue): a server error is anything else, 500 above all.
                    "not_a_server_error": {
                        "expected-statuses": ["2xx", "3xx", "4xx", 502, 503, 504]
                    }
                },
            }
        ),
    )


schema = fuzzing(EXAMPLES, bulk_examples=10)
# With keys every answer but /health's and /openapi.json's is the same 401: a few suffice.
keyed_schema = fuzzing(5, bulk_examples=2, coverage=False)


@schema.parametrize()
def test_the_gateway_keeps_to_its_document(case, gateway_url):
    case.call_and_validate(base_url=gateway_url, checks=CHECKS)


@keyed_schema.parametrize()
def test_a_gateway_with_api_keys_keeps_to_its_document(case, keyed_gateway_url):
    case.call_and_validate(base_url=keyed_gateway_url, checks=CHECKS)
