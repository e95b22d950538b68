"""What `json.loads` lets through and the rest of the gateway cannot take: deep nesting, lone
UTF-16 surrogates. Both walks are iterative, so no input can exhaust the stack."""

from __future__ import annotations

import re
from typing import Any

# Deeper than any chat body, tool schema or JSON-schema `format` needs; json.dumps (the cache
# key, the upstream payload) recurses once per level, so the limit keeps it far from Python's.
MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` levels."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def has_surrogate(text: str) -> bool:
    # A well-formed pair ("\ud83d\ude00") is decoded to one character: what is left is lone.
    return not text.isascii() and _SURROGATE.search(text) is not None


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Where the first string (or object key) holding a lone surrogate is, as
    `messages[0].content`; None when there is none. Such text cannot be encoded as UTF-8,
    which Ollama, the cache key and the response all need."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if has_surrogate(item):
                return where or "body"
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                name = f"{where}.{key}" if where else str(key)
                if has_surrogate(key):
                    return f"{where}.{key!a}" if where else ascii(key)
                stack.append((child, name))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


def quote(value: Any, limit: int = 60) -> str:
    """A client's value for an error message or a log line: repr'd (control characters and
    surrogates escaped, so no log line can be forged) and cut to `limit` characters."""
    text = ascii(value) if isinstance(value, str) and has_surrogate(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
