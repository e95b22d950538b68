"""API keys: who a request comes from, and what it may do.

A key is `cbk_` and 43 random characters, shown once when it is created; the configuration
keeps only `name:role:sha256:<hex>` (a key has 256 bits of entropy, so an unsalted SHA-256 is
enough to make the stored form useless to a reader). A presented key is hashed and compared
with every stored hash in constant time. Roles: `user`, `batch` (its generations queue at batch
priority) and `admin` (also cache clear, stats reset, model management and others' tickets).

Without keys the gateway is open, as before, and every caller counts as the admin; it refuses to
start on a non-loopback address unless `[auth].allow_anonymous` says that is meant.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass

from server.config import Config
from server.services.queue import Priority

KEY_PREFIX = "cbk_"
ROLES = ("user", "batch", "admin")
_ENTRY = re.compile(r"^([A-Za-z0-9._@-]{1,64}):(user|batch|admin):sha256:([0-9a-f]{64})$")


@dataclass(frozen=True)
class KeyEntry:
    name: str
    role: str
    digest: str  # hex SHA-256 of the key


@dataclass(frozen=True)
class Identity:
    """The caller: a key's name (never the key), a trusted user header's value, or anonymous."""

    name: str
    admin: bool
    priority: Priority = Priority.INTERACTIVE


ANONYMOUS = Identity("anonymous", admin=True)


def parse_key_entry(entry: str) -> KeyEntry:
    match = _ENTRY.match(entry)
    if match is None:
        raise ValueError(
            f"{entry[:40]!r} is not name:role:sha256:<64 hex digits> (role user, batch or admin)"
        )
    return KeyEntry(*match.groups())


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(name: str, role: str = "user") -> tuple[str, str]:
    """A fresh key and the entry to store for it: (key, "name:role:sha256:...")."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = f"{name}:{role}:sha256:{digest(key)}"
    parse_key_entry(entry)  # the name must fit too
    return key, entry


class KeyRing:
    def __init__(self, entries: tuple[str, ...]) -> None:
        self.entries = [parse_key_entry(e) for e in entries]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def identify(self, key: str) -> Identity | None:
        """The key's identity, or None; every stored hash is compared, in constant time."""
        presented = digest(key).encode()
        found: KeyEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.digest.encode()):
                found = entry
        if found is None:
            return None
        priority = Priority.BATCH if found.role == "batch" else Priority.INTERACTIVE
        return Identity(found.name, admin=found.role == "admin", priority=priority)


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """`Authorization: Bearer <key>` (OpenAI, OLLAMA_API_KEY) or `X-API-Key: <key>`."""
    if api_key:
        return api_key.strip()
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def is_loopback(host: str) -> bool:
    if host in ("localhost",) or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Asked for every request's Host header: the answers are kept (a handful of names in practice).
_is_loopback_host = functools.lru_cache(maxsize=256)(is_loopback)


def host_allowed(bound: str, host_header: str) -> bool:
    """The Host guard (DNS-rebinding protection, as Ollama's CVE-2024-28224 fix): while bound
    to loopback, only requests addressed to localhost or a loopback IP (or without a Host)."""
    if not host_header or not _is_loopback_host(bound):
        return True
    return _is_loopback_host(_host_name(host_header).lower())


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:8080
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def unkeyed_caller(user: str) -> Identity:
    """Who calls when no keys are set: the trusted user header's name, else anonymous."""
    return Identity(user, admin=True) if user else ANONYMOUS


def as_user(who: Identity, user: str) -> Identity:
    """A key's identity with the user a trusted header names behind it (for fair turns)."""
    if not user:
        return who
    return Identity(f"{who.name}/{user}", admin=who.admin, priority=who.priority)


class Exposed(OSError):
    """Bound beyond this machine with nobody's key required, and not on purpose."""

    def __init__(self, host: str) -> None:
        super().__init__(
            errno.EACCES,
            f"refusing to listen on {host} without API keys: anyone who can reach it could use "
            "and control the gateway. Create a key (`chatbot-backend keys create NAME`), or set "
            "[auth].allow_anonymous = true if an open gateway is what you want",
        )


def check_exposure(config: Config) -> None:
    host = config.server.host
    if not is_loopback(host) and not config.auth.keys and not config.auth.allow_anonymous:
        raise Exposed(host)


class RateLimiter:
    """Requests per minute per user: a sliding window of start times."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def retry_after(self, user: str, limit: int) -> int | None:
        """None when the request may go now (and it is counted); else seconds to wait."""
        if limit <= 0:
            return None
        now = time.monotonic()
        window = self._seen.setdefault(user, deque())
        while window and now - window[0] >= 60:
            window.popleft()
        if len(window) >= limit:
            return max(1, int(60 - (now - window[0])) + 1)
        window.append(now)
        if len(self._seen) > 10000:  # forget idle users rather than grow without bound
            for name in [n for n, w in self._seen.items() if not w]:
                del self._seen[name]
        return None
