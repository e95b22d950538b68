"""A whole JSON answer, written with orjson: a cache hit's body in ~0.2 µs instead of ~4.5 µs
with json.dumps (bench/README.md, "Hit throughput")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def orjson_response(data: Any, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """200 with `data` as compact UTF-8 JSON (what json.dumps with ensure_ascii=False gives,
    without the spaces); the Content-Type web.json_response would set."""
    return web.Response(
        body=orjson.dumps(data),
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )
