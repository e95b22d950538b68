"""The SSE frames of a live answer: one JSON object per `data:` frame, made once per token per
client, so encoded with orjson."""

from __future__ import annotations

import json
from typing import Any

import orjson


def sse_frame(payload: Any) -> bytes:
    """One `data:` line pair; JSON escapes newlines, so a frame is always one line.

    The bytes json.dumps(payload, ensure_ascii=False, separators=(",", ":")) gives, from
    orjson (a token's frame in ~0.4 µs instead of ~3); what orjson refuses (an integer past
    64 bits) goes through json."""
    try:
        data = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return b"data: " + data + b"\n\n"
