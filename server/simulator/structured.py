"""Deterministic JSON shaped by a JSON Schema: tool calls and answers constrained by `format`."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

# Schemas come from clients (and from fuzzers): stay small and never fail, whatever they say.
_MAX_DEPTH = 4
_MAX_ITEMS = 2
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def _number(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _kind(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if isinstance(k, str) and k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if isinstance(schema.get("properties"), dict):
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def value_for(schema: Any, rng: random.Random, words: Sequence[str], depth: int = 0) -> Any:
    """A value that satisfies the common parts of `schema` (type, enum, const, anyOf, ranges)."""
    if not isinstance(schema, dict):
        return rng.choice(words)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return value_for(options[0], rng, words, depth + 1)
    kind = _kind(schema)
    if kind in ("integer", "number"):
        low = _number(schema, "minimum")
        high = _number(schema, "maximum")
        low = 0.0 if low is None else low
        high = low + 100 if high is None or high < low else high
        if kind == "integer":
            return rng.randint(int(low), max(int(low), int(high)))
        return round(rng.uniform(low, high), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "array":
        if depth >= _MAX_DEPTH:
            return []
        return [value_for(schema.get("items"), rng, words, depth + 1) for _ in range(_MAX_ITEMS)]
    if kind == "object":
        properties = schema.get("properties")
        if depth >= _MAX_DEPTH or not isinstance(properties, dict):
            return {}
        return {str(key): value_for(sub, rng, words, depth + 1) for key, sub in properties.items()}
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    return function if isinstance(function, dict) else {}


def _tool_name(tool: dict[str, Any]) -> str:
    name = _function(tool).get("name")
    return name if isinstance(name, str) else ""


def pick_tool(tools: list[dict[str, Any]], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The tool the last user message names (so a test can steer), else the first one."""
    users = [message for message in messages if message.get("role") == "user"]
    last_user: dict[str, Any] = users[-1] if users else {}
    text = str(last_user.get("content") or "")
    for tool in tools:
        name = _tool_name(tool)
        if name and re.search(rf"\b{re.escape(name)}\b", text):
            return tool
    return tools[0]


def tool_call(
    tools: list[dict[str, Any]], messages: list[dict[str, Any]], seed: bytes, words: Sequence[str]
) -> dict[str, Any]:
    """One native tool call: {id, function: {index, name, arguments}}, arguments an object."""
    rng = random.Random(seed)
    tool = pick_tool(tools, messages)
    arguments = value_for(_function(tool).get("parameters"), rng, words)
    call_id = "call_" + "".join(rng.choice(_ID_ALPHABET) for _ in range(8))
    return {
        "id": call_id,
        "function": {
            "index": 0,
            "name": _tool_name(tool),
            "arguments": arguments if isinstance(arguments, dict) else {},
        },
    }
