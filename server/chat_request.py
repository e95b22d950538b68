"""Parse and validate a chat request body into a ChatRequest, with a 400 naming the bad field."""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.config import Config
from server.errors import BadRequest
from server.json_checks import lone_surrogate_path, quote
from server.services.ollama import keep_alive_value

ROLES = ("system", "user", "assistant", "tool")
# Message fields passed on to Ollama besides role and content; anything else is dropped.
_MESSAGE_EXTRAS = ("images", "tool_calls", "tool_name", "thinking")
_MAX_REQUEST_ID = 128


class RandomPool:
    """Bytes from os.urandom, drawn a few KiB at a time: one getrandom() syscall per id showed
    in profiles of the cache-hit path (~5 % of a hit); from a pool it is a slice. The bytes are
    as unpredictable as urandom's. A forked child starts a pool of its own, so it never hands
    out its parent's."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._pool, self._at = b"", 0

    def take(self, count: int) -> bytes:
        at = self._at
        if at + count > len(self._pool):
            self._pool, at = os.urandom(max(self.size, count)), 0
        self._at = at + count
        return self._pool[at : at + count]


RANDOM = RandomPool()


def new_request_id() -> str:
    """96 random bits: an id nobody can guess, so nobody can DELETE another client's request
    (a counter was guessable); uuid4 showed in profiles of the cache-hit path."""
    return "r-" + base64.urlsafe_b64encode(RANDOM.take(12)).decode()


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request, with the defaults of the configuration filled in."""

    messages: tuple[dict[str, Any], ...]  # effective: system prompt already applied
    model: str
    request_id: str
    stream: bool = True
    use_cache: bool = True
    cache_read: bool = True  # use_cache, and no `Cache-Control: no-cache` on the request
    cache_write: bool = True  # no `Cache-Control: no-store` on the request
    options: dict[str, Any] | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: str | float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # A request of Ollama's own API: "chat" or "generate", the body to send upstream as the
    # client wrote it, and the fields beyond model/messages/options/format that change the
    # answer (think, tools, prompt, system, …), for the cache key.
    kind: str = "chat"
    native: dict[str, Any] | None = None
    key_extra: dict[str, Any] | None = None
    endpoint: str = "chat-optimized"
    # Who asked (an API key's name): whose turn it is in the queue, whose ticket, and with
    # [cache].scope = "per_key" whose cache entries.
    user: str = "anonymous"
    priority: int = 0  # Priority.INTERACTIVE; a "batch" key's requests are 1

    @property
    def path(self) -> str:
        return "/api/generate" if self.kind == "generate" else "/api/chat"

    def ollama_payload(self) -> dict[str, Any]:
        if self.native is not None:
            return self.native
        payload: dict[str, Any] = {"model": self.model, "messages": list(self.messages)}
        if self.options:
            payload["options"] = self.options
        if self.format is not None:
            payload["format"] = self.format
        if self.keep_alive is not None:
            payload["keep_alive"] = self.keep_alive
        return payload


# The configured keep_alive, converted once per distinct setting rather than once per request
# ("5m" costs a failed float() each time).
_keep_alive = functools.lru_cache(maxsize=8)(keep_alive_value)


def surrogate_path(body: Any) -> str | None:
    """json_checks.lone_surrogate_path, walked only when needed: orjson refuses a lone
    surrogate and checks a usual body in ~1 µs, so only a body it refuses (for that, or for an
    integer past 64 bits) is walked to find where the surrogate is (the walk showed in hit
    profiles)."""
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        return lone_surrogate_path(body)
    return None


def bad_field(field_name: str, message: str) -> BadRequest:
    """A 400 naming the field, with `invalid_<top-level field>` as its code."""
    top = field_name.split("[")[0].split(".")[0]
    # A machine code stays a plain name even when the field is a client's odd key.
    return BadRequest(
        f"{field_name}: {message}", code=f"invalid_{top if top.isidentifier() else 'body'}"
    )


def _pick(body: Mapping[str, Any], snake: str, camel: str) -> Any:
    """The snake_case name wins; the camelCase name of the old Node routes is accepted too."""
    if snake in body:
        return body[snake]
    return body.get(camel)


def _bool(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_field(name, f"must be true or false, got {type(value).__name__}")
    return value


def wants_stream(accept: str | None) -> bool:
    """Streams by default; a client that accepts only JSON gets JSON."""
    if not accept:
        return True
    accept = accept.lower()
    return not ("application/json" in accept and "text/event-stream" not in accept)


def cache_directives(cache_control: str | None) -> set[str]:
    return {d.split("=", 1)[0].strip().lower() for d in (cache_control or "").split(",")}


def parse_chat_request(
    body: Any,
    config: Config,
    *,
    accept: str | None = None,
    cache_control: str | None = None,
    request_id: str | None = None,
) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    where = surrogate_path(body)
    if where is not None:
        # What JSON.stringify gives for an emoji cut in half: Ollama, the cache key and the
        # answer all need UTF-8, which cannot hold it.
        raise bad_field(
            where,
            "contains a lone UTF-16 surrogate (half of an emoji or other character cut in two); "
            "send valid Unicode text",
        )

    messages = _messages(body.get("messages"))

    model = body.get("model")
    if model is None:
        model = config.ollama.model
    elif not isinstance(model, str) or not model.strip():
        raise bad_field("model", "must be a non-empty string")

    system_prompt = _pick(body, "system_prompt", "systemPrompt")
    if system_prompt is None:
        system_prompt = config.ollama.system_prompt
    elif not isinstance(system_prompt, str):
        raise bad_field("system_prompt", "must be a string")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]

    stream = _bool(body, "stream")
    if stream is None:
        stream = wants_stream(accept)
    use_cache = _pick(body, "use_cache", "useCache")
    if use_cache is not None and not isinstance(use_cache, bool):
        raise bad_field("use_cache", "must be true or false")

    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise bad_field("options", 'must be an object such as {"temperature": 0.7}')

    fmt = body.get("format")
    if fmt is not None and not (fmt == "json" or isinstance(fmt, dict)):
        raise bad_field("format", 'must be "json" or a JSON schema object')

    rid = _pick(body, "request_id", "requestId")
    if rid is None:
        rid = request_id or new_request_id()
    elif not isinstance(rid, str) or not rid or len(rid) > _MAX_REQUEST_ID:
        raise bad_field(
            "request_id", f"must be a non-empty string of at most {_MAX_REQUEST_ID} characters"
        )

    use_cache = True if use_cache is None else use_cache
    directives = cache_directives(cache_control)
    return ChatRequest(
        messages=tuple(messages),
        model=model.strip(),
        request_id=rid,
        stream=stream,
        use_cache=use_cache,
        # A bypassed read still refreshes the entry with the fresh answer; no-store skips that.
        cache_read=use_cache and "no-cache" not in directives,
        cache_write="no-store" not in directives,
        options=options or None,
        format=fmt,
        keep_alive=_keep_alive(config.ollama.keep_alive),
    )


def _messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise bad_field("messages", "is required (a list of {role, content})")
    if not isinstance(value, list):
        raise bad_field(
            "messages", f"must be a list of {{role, content}}, got {type(value).__name__}"
        )
    if not value:
        raise bad_field("messages", "must not be empty")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_field(where, "must be an object with role and content")
        role = msg.get("role")
        if role not in ROLES:
            raise bad_field(
                f"{where}.role", f"must be one of {', '.join(ROLES)}, got {quote(role)}"
            )
        content = msg.get("content")
        if not isinstance(content, str):
            raise bad_field(f"{where}.content", f"must be a string, got {type(content).__name__}")
        clean = {"role": role, "content": content}
        for extra in _MESSAGE_EXTRAS:
            if msg.get(extra):
                clean[extra] = msg[extra]
        out.append(clean)
    return out
