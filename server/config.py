"""The typed configuration registry: defaults, ranges, help text, loading and validation.

One registry drives everything that knows about settings: the loader, the validator, the
environment overrides, `--print-config`, `.env.example`, the README's table (checked by a test)
and, later, the dashboard's settings editor. Add a key here and all of them know it.

Precedence, lowest to highest: defaults, the TOML file, `.env` in the working directory, the
process environment (short names such as `PORT`, then `CHATBOT_<SECTION>_<KEY>`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomlkit

LOG_LEVELS = ("debug", "info", "warning", "error")

# Go's time.ParseDuration units, which is what Ollama accepts for a string keep_alive.
_UNIT = r"(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"^-?(?:{_UNIT})+$")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names key, value and rule."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _meta(
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: str | None = None,
) -> dict[str, Any]:
    return {"help": help, "min": min, "max": max, "choices": choices, "check": check}


@dataclass(frozen=True)
class ServerSection:
    host: str = field(
        default="127.0.0.1",
        metadata=_meta(
            "Address to listen on; 127.0.0.1 keeps the gateway private to this machine",
            check="host",
        ),
    )
    port: int = field(default=8080, metadata=_meta("TCP port of the HTTP API", min=1, max=65535))
    # 32 MiB: a chat with a few photos (base64 in the JSON) fits, as it does in Ollama.
    max_body_kb: int = field(
        default=32768,
        metadata=_meta(
            "Largest accepted request body, in KiB (larger gets 413); model uploads to "
            "/api/blobs stream through and are not limited",
            min=1,
            max=1048576,
        ),
    )
    idle_timeout_seconds: float = field(
        default=60,
        metadata=_meta(
            "A connection with no request in progress (new, or kept alive after one) is closed "
            "after this long",
            min=1,
            max=3600,
        ),
    )
    header_timeout_seconds: float = field(
        default=10,
        metadata=_meta(
            "Longest time a request's headers may take from their first byte (then 408 and the "
            "connection is closed)",
            min=1,
            max=600,
        ),
    )
    body_timeout_seconds: float = field(
        default=30,
        metadata=_meta(
            "Longest pause while a request body is arriving (then 408)", min=1, max=3600
        ),
    )
    max_connections: int = field(
        default=4096,
        metadata=_meta(
            "Open client connections allowed at once (also kept below the open-files limit); "
            "over it the longest-idle one is closed, or a new one gets 503 if all are busy",
            min=16,
            max=1000000,
        ),
    )


@dataclass(frozen=True)
class HostSpec:
    """One Ollama server of `[[ollama.hosts]]`."""

    url: str
    # None: `[queue].max_concurrent`, as for the single `api_url`.
    max_concurrent: int | None = None
    weight: float = 1.0
    # None: every model the host has; otherwise only these are sent to it.
    models: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        if self.max_concurrent is not None:
            out["max_concurrent"] = self.max_concurrent
        if self.weight != 1.0:
            out["weight"] = self.weight
        if self.models is not None:
            out["models"] = list(self.models)
        return out


_HOSTS_RULE = "a list of [[ollama.hosts]] tables (url, max_concurrent, weight, models)"
# The fields of one `[[ollama.hosts]]` table: (type, min, max).
HOST_FIELDS: dict[str, tuple[str, float | None, float | None]] = {
    "url": ("url", None, None),
    "max_concurrent": ("int", 1, 64),
    "weight": ("float", 0.01, 1000),
    "models": ("list", None, None),
}


@dataclass(frozen=True)
class OllamaSection:
    api_url: str = field(
        default="http://localhost:11434",
        metadata=_meta("Base URL of the Ollama server", check="url"),
    )
    model: str = field(
        default="llama3.2",
        metadata=_meta("Model used when a request names none", check="nonempty"),
    )
    system_prompt: str = field(
        default="",
        metadata=_meta("System prompt prepended when a request has no system message"),
    )
    keep_alive: str = field(
        default="15m",
        metadata=_meta(
            "How long Ollama keeps the model loaded (15m, 1h30m, seconds, or -1 = forever)",
            check="keep_alive",
        ),
    )
    timeout_seconds: float = field(
        default=300,
        metadata=_meta(
            "Longest wait for Ollama's next chunk before giving up (504)", min=1, max=86400
        ),
    )
    connect_timeout_seconds: float = field(
        default=5,
        metadata=_meta("Longest wait to open a connection to Ollama", min=0.1, max=600),
    )
    warm_up: bool = field(
        default=True, metadata=_meta("Load the model at start-up with an empty chat request")
    )
    probe_interval_seconds: float = field(
        default=15,
        metadata=_meta(
            "How often each Ollama host is checked (reachable, models installed and loaded)",
            min=1,
            max=3600,
        ),
    )
    allow_management: bool = field(
        default=True,
        metadata=_meta(
            "Relay Ollama's model management (pull, push, create, copy, delete, blob uploads); "
            "false answers those with 403"
        ),
    )
    hosts: tuple[HostSpec, ...] = field(
        default=(),
        metadata=_meta(
            "Several Ollama servers, as [[ollama.hosts]] tables (url, max_concurrent, weight, "
            "models); empty: api_url alone, with [queue].max_concurrent",
            check="hosts",
        ),
    )


@dataclass(frozen=True)
class CacheSection:
    enabled: bool = field(default=True, metadata=_meta("Cache complete answers in RAM"))
    max_size_mb: int = field(
        default=256, metadata=_meta("Memory budget of the response cache, in MiB", min=1, max=65536)
    )
    ttl_seconds: int = field(
        default=3600, metadata=_meta("Seconds a cached answer stays valid", min=1, max=31536000)
    )
    scope: str = field(
        default="shared",
        metadata=_meta(
            "shared: identical questions share answers across users; per_key: each API key's "
            "answers are its own, so a hit cannot reveal what someone else asked",
            choices=("shared", "per_key"),
        ),
    )
    backend: str = field(
        default="auto",
        metadata=_meta(
            "Tiers behind the RAM cache: memory (none), sqlite (a file that outlives restarts), "
            "redis (shared by gateways), sqlite+redis; auto: sqlite in the desktop app, memory "
            "headless, plus redis when redis_url is set",
            choices=("auto", "memory", "sqlite", "redis", "sqlite+redis"),
        ),
    )
    disk_path: str = field(
        default="",
        metadata=_meta(
            "SQLite file of the sqlite tier; empty: answers.sqlite3 in the platform cache "
            "directory ($XDG_CACHE_HOME/chatbot-companion on Linux)"
        ),
    )
    disk_max_size_mb: int = field(
        default=1024,
        metadata=_meta(
            "Size budget of the sqlite tier, in MiB (oldest entries go first)", min=1, max=1048576
        ),
    )
    redis_url: str = field(
        default="",
        metadata=_meta(
            "Redis/Valkey URL of the shared tier (redis://host:6379/0, rediss://, unix://); "
            "empty: none. Bound its size with Redis's maxmemory",
            check="redis_url",
        ),
    )


@dataclass(frozen=True)
class QueueSection:
    max_concurrent: int = field(
        default=1,
        metadata=_meta(
            "Generations sent to Ollama at once (to each host of [[ollama.hosts]] that sets no "
            "max_concurrent)",
            min=1,
            max=64,
        ),
    )
    max_queue_size: int = field(
        default=100,
        metadata=_meta("Requests allowed to wait; beyond it new ones get 503", min=0, max=100000),
    )
    estimated_time_per_request_ms: int = field(
        default=30000,
        metadata=_meta(
            "Generation time assumed for ETAs until real ones are measured", min=1, max=3600000
        ),
    )
    ticket_ttl_seconds: int = field(
        default=120,
        metadata=_meta("Seconds an unclaimed /api/chat-queue ticket is kept", min=1, max=86400),
    )
    state_file: str = field(
        default="",
        metadata=_meta(
            "JSON file keeping the last measured generation times across restarts, so the "
            "first ETAs after a start use them; empty: queue.json in the platform cache "
            "directory in the desktop app, none headless"
        ),
    )


@dataclass(frozen=True)
class BatchSection:
    enabled: bool = field(
        default=True, metadata=_meta("Share identical in-flight generations and accept bulk jobs")
    )
    max_batch_size: int = field(
        default=3, metadata=_meta("Requests grouped into one bulk batch", min=1, max=100)
    )
    batch_timeout_ms: int = field(
        default=2000,
        metadata=_meta("Longest wait for a bulk batch to fill, in ms", min=0, max=600000),
    )


@dataclass(frozen=True)
class CorsSection:
    allowed_origins: tuple[str, ...] = field(
        default=("http://localhost:3000", "http://localhost:3001"),
        metadata=_meta(
            'Browser origins allowed to call the API (exact origins, or "*")', check="origins"
        ),
    )


@dataclass(frozen=True)
class AuthSection:
    keys: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "API keys, as name:role:sha256:<hash> (role user, batch or admin); create them with "
            "`chatbot-backend keys create NAME` or the Settings page. Empty: no keys needed",
            check="keys",
        ),
    )
    allow_anonymous: bool = field(
        default=False,
        metadata=_meta(
            "Serve without keys even on a non-loopback address (otherwise that refuses to start)"
        ),
    )
    user_header: str = field(
        default="",
        metadata=_meta(
            "A trusted header naming the user, for fair turns without keys (e.g. "
            "X-OpenWebUI-User-Id); empty: off",
            check="header",
        ),
    )
    max_waiting_per_user: int = field(
        default=0,
        metadata=_meta(
            "Requests one user may have waiting at once (more get 429); 0: no limit",
            min=0,
            max=100000,
        ),
    )
    requests_per_minute_per_user: int = field(
        default=0,
        metadata=_meta(
            "Generation requests one user may make per minute (more get 429); 0: no limit",
            min=0,
            max=1000000,
        ),
    )


@dataclass(frozen=True)
class LoggingSection:
    level: str = field(default="info", metadata=_meta("Log level", choices=LOG_LEVELS))


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    ollama: OllamaSection = field(default_factory=OllamaSection)
    cache: CacheSection = field(default_factory=CacheSection)
    queue: QueueSection = field(default_factory=QueueSection)
    batch: BatchSection = field(default_factory=BatchSection)
    cors: CorsSection = field(default_factory=CorsSection)
    auth: AuthSection = field(default_factory=AuthSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in fields(self):
            section = getattr(self, s.name)
            out[s.name] = {k.name: _plain(getattr(section, k.name)) for k in fields(section)}
        return out

    def to_toml(self) -> str:
        return tomlkit.dumps(self.to_dict())


@dataclass(frozen=True)
class Key:
    """One setting as the registry describes it."""

    section: str
    name: str
    type: Literal["str", "int", "float", "bool", "list", "hosts"]
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple[str, ...] | None
    check: str | None

    @property
    def dotted(self) -> str:
        return f"[{self.section}].{self.name}"

    @property
    def env_name(self) -> str:
        return f"CHATBOT_{self.section.upper()}_{self.name.upper()}"


HOSTS_KEY, API_URL_KEY = ("ollama", "hosts"), ("ollama", "api_url")

# Short names from the Rust backend and the old Next.js .env.local, so users can keep them.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "PORT": ("server", "port"),
    "HOST": ("server", "host"),
    "CACHE_MAX_SIZE_MB": ("cache", "max_size_mb"),
    "LOG_LEVEL": ("logging", "level"),
    "NEXT_PUBLIC_CHAT_API_URL": ("ollama", "api_url"),
    "NEXT_PUBLIC_OLLAMA_MODEL": ("ollama", "model"),
    "NEXT_PUBLIC_OLLAMA_SYSTEM_PROMPT": ("ollama", "system_prompt"),
}
# Variables with the CHATBOT_ prefix that are not settings: --config, and the scripts' own
# (install_desktop.sh's launcher, run.sh's simulator port and install switch).
ENV_RESERVED = {"CHATBOT_CONFIG", "CHATBOT_EXEC", "CHATBOT_SIM_PORT", "CHATBOT_SKIP_INSTALL"}


def _type_name(annotation: Any) -> Literal["str", "int", "float", "bool", "list", "hosts"]:
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if "HostSpec" in name:
        return "hosts"
    if name.startswith("tuple"):
        return "list"
    if name in ("str", "int", "float", "bool"):
        return name  # type: ignore[return-value]
    raise TypeError(f"unsupported config type {annotation!r}")


def registry() -> list[Key]:
    """Every setting, in file order."""
    keys = []
    for section in fields(Config):
        factory: Any = section.default_factory  # every section field has a default_factory
        default_section = factory()
        for f in fields(default_section):
            m = f.metadata
            keys.append(
                Key(
                    section=section.name,
                    name=f.name,
                    type=_type_name(f.type),
                    default=_plain(getattr(default_section, f.name)),
                    help=m["help"],
                    min=m["min"],
                    max=m["max"],
                    choices=m["choices"],
                    check=m["check"],
                )
            )
    return keys


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [v.to_dict() if isinstance(v, HostSpec) else v for v in value]
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)
    return str(value)


def _rule(key: Key) -> str:
    """What is allowed, for error messages and docs."""
    if key.choices:
        return "one of " + ", ".join(key.choices)
    if key.min is not None and key.max is not None:
        lo, hi = (_num(key.min), _num(key.max))
        return f"must be {'a whole number ' if key.type == 'int' else 'a number '}{lo}..{hi}"
    described = {
        "url": "an http:// or https:// URL",
        "keep_alive": "a duration (5m, 1h30m), seconds, 0 or -1",
        "origins": 'a list of origins (scheme://host[:port]) or ["*"]',
        "nonempty": "a non-empty string",
        "host": "an IP address or host name",
        "keys": "a list of name:role:sha256:<64 hex digits> entries",
        "header": "an HTTP header name, or empty",
        "redis_url": "a redis://, rediss:// or unix:// URL, or empty",
        "hosts": _HOSTS_RULE,
    }
    if key.check in described:
        return "must be " + described[key.check]
    return {
        "bool": "must be true or false",
        "list": "must be a list of strings",
        "str": "must be a string",
    }.get(key.type, "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def validate_value(key: Key, value: Any) -> Any:
    """Return the value converted to the key's type, or raise ConfigError naming the key."""

    def bad(reason: str) -> ConfigError:
        return ConfigError([f"{key.dotted} = {_fmt(value)}: {reason}"])

    t = key.type
    if t == "hosts":
        hosts, problems = parse_hosts(value, key.dotted)
        if problems:
            raise ConfigError(problems)
        return hosts
    if t == "bool":
        if not isinstance(value, bool):
            raise bad(_rule(key))
        return value
    if t in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(_rule(key))
        if t == "int" and not float(value).is_integer():
            raise bad(_rule(key))
        value = int(value) if t == "int" else float(value)
        if (key.min is not None and value < key.min) or (key.max is not None and value > key.max):
            raise bad(_rule(key))
        return value
    if t == "list":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad(_rule(key))
        value = tuple(value)
    elif t == "str":
        if (
            key.check == "keep_alive"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            value = _num(value)  # Ollama takes a number of seconds too; keep it as text
        if not isinstance(value, str):
            raise bad(_rule(key))
        if key.choices and value not in key.choices:
            raise bad(_rule(key))
    problem = _check(key.check, value)
    if problem:
        raise bad(problem)
    return value


def parse_hosts(
    value: Any, dotted: str = "[ollama].hosts"
) -> tuple[tuple[HostSpec, ...], list[str]]:
    """The usable `[[ollama.hosts]]` entries, and a problem for each one that is not, naming it
    as `ollama.hosts[i].field`. An entry may be a bare URL string. Text (the environment, a
    text field) is JSON, or URLs separated by commas."""
    if isinstance(value, str):
        value = _hosts_text(value)
    if not isinstance(value, list | tuple):
        return (), [f"{dotted} = {_fmt(value)}: must be {_HOSTS_RULE}"]
    hosts: list[HostSpec] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(value):
        where = f"ollama.hosts[{i}]"
        if isinstance(entry, HostSpec):
            entry = entry.to_dict()
        if isinstance(entry, str):
            entry = {"url": entry}
        if not isinstance(entry, dict):
            problems.append(f"{where} = {_fmt(entry)}: must be a table with at least a url")
            continue
        bad = _host_problems(entry, i)
        if bad:
            problems += bad
            continue
        url = str(entry["url"]).rstrip("/")
        if url in seen:
            problems.append(
                f"{where}.url = {_fmt(entry['url'])}: the same host as ollama.hosts[{seen[url]}]"
            )
            continue
        seen[url] = i
        models = entry.get("models")
        hosts.append(
            HostSpec(
                url=url,
                max_concurrent=int(entry["max_concurrent"]) if "max_concurrent" in entry else None,
                weight=float(entry.get("weight", 1.0)),
                models=tuple(m.strip() for m in models) if models is not None else None,
            )
        )
    return tuple(hosts), problems


def _hosts_text(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return [item.strip() for item in text.split(",") if item.strip()]


def _host_problems(entry: dict[str, Any], i: int) -> list[str]:
    where = f"ollama.hosts[{i}]"
    problems = []
    for name in entry:
        if name not in HOST_FIELDS:
            problems.append(
                f"{where}.{name}: unknown key (keys of [[ollama.hosts]] are "
                f"{', '.join(HOST_FIELDS)})"
            )
    if "url" not in entry:
        problems.append(f"{where}.url: missing (each [[ollama.hosts]] table needs a url)")
    for name, (kind, lo, hi) in HOST_FIELDS.items():
        if name not in entry:
            continue
        value = entry[name]
        key = Key(
            section="ollama",
            name=f"hosts[{i}].{name}",
            type="str" if kind == "url" else kind,  # type: ignore[arg-type]
            default=None,
            help="",
            min=lo,
            max=hi,
            choices=None,
            check="url" if kind == "url" else None,
        )
        try:
            validate_value(key, value)
        except ConfigError as exc:
            # validate_value names the key "[ollama].hosts[i].name"; the table's own name reads
            # better for an entry of a list.
            problems.append(exc.problems[0].replace("[ollama].", "ollama.", 1))
            continue
        if name == "models" and not all(m.strip() for m in value):
            problems.append(f"{where}.models = {_fmt(value)}: a model name must not be empty")
    return problems


def _check(check: str | None, value: Any) -> str | None:
    if check == "nonempty" and not value.strip():
        return "must not be empty"
    if check == "host" and not value.strip():
        return "must be an IP address or host name"
    if check == "url":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "must be an http:// or https:// URL with a host, e.g. http://localhost:11434"
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            return "has an invalid port"
    if check == "keep_alive" and not (_is_number(value) or _GO_DURATION.match(value)):
        return "must be a duration like 5m, 1h30m, 0 or -1, or a number of seconds"
    if check == "keys":
        from server.auth import parse_key_entry

        names = set()
        for entry in value:
            try:
                name = parse_key_entry(entry).name
            except ValueError as exc:
                return str(exc)
            if name in names:
                return f"the key name {name!r} is used twice"
            names.add(name)
    if check == "header" and value and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        return "must be an HTTP header name (letters, digits, -)"
    if check == "redis_url" and value:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            return "must be a redis://, rediss:// or unix:// URL, e.g. redis://localhost:6379/0"
    if check == "origins":
        for origin in value:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("",)
            ):
                return f'{origin!r} is not an origin (scheme://host[:port], no path) or "*"'
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_env_value(key: Key, text: str) -> Any:
    """Turn an environment string into the key's type; validation happens afterwards."""
    text = text.strip()
    if key.type == "bool":
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        return text
    if key.type in ("int", "float"):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    if key.type == "list":
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


@dataclass(frozen=True)
class Loaded:
    """What `load_lenient` found: the configuration that can run, and what was wrong."""

    config: Config
    problems: list[str]
    # Keys whose value in the file could not be used (the default, or the environment's value,
    # runs instead), each with its problem: the Settings page marks them.
    bad_keys: dict[tuple[str, str], str]
    # The file could not be read or parsed at all: nothing of it is in `config`.
    broken: bool = False


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Build the effective configuration; raise ConfigError listing every problem found."""
    result = load_lenient(path, env, overrides)
    if result.problems:
        raise ConfigError(result.problems)
    return result.config


def load_lenient(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Loaded:
    """Like `load`, but a value that cannot be used is reported and skipped, not fatal: each
    key takes the highest layer (file, environment, command line) whose value is valid, else
    its default. So one bad value in a file does not throw away the port, the URL and the rest.
    The desktop app starts this way; the headless server refuses to start on any problem."""
    env = os.environ if env is None else env
    keys = {(k.section, k.name): k for k in registry()}
    problems: list[str] = []
    from_file: dict[tuple[str, str], Any] = {}
    broken = False

    if path is not None:
        doc, problem = _read_toml(path)
        if problem:
            problems.append(problem)
            broken = True
        for section, table in doc.items():
            if not isinstance(table, dict):
                problems.append(
                    f"[{section}]: unknown top-level key (sections are {', '.join(_sections())})"
                )
                continue
            if section not in _sections():
                problems.append(
                    f"[{section}]: unknown section (sections are {', '.join(_sections())})"
                )
                continue
            for name, value in table.items():
                if (section, name) not in keys:
                    known = ", ".join(k.name for k in keys.values() if k.section == section)
                    problems.append(
                        f"[{section}].{name}: unknown key (keys of [{section}] are {known})"
                    )
                    continue
                from_file[(section, name)] = value

    by_env: dict[tuple[str, str], tuple[str, str]] = {}
    for alias, target in ENV_ALIASES.items():
        if alias in env:
            by_env[target] = (alias, env[alias])
    for var, text in env.items():
        if not var.startswith("CHATBOT_") or var in ENV_RESERVED:
            continue
        match = next((k for k in keys.values() if k.env_name == var), None)
        if match is None:
            problems.append(
                f"{var}: unknown setting (e.g. CHATBOT_SERVER_PORT, CHATBOT_OLLAMA_MODEL)"
            )
            continue
        by_env[(match.section, match.name)] = (var, text)

    layers: list[tuple[dict[tuple[str, str], Any], str | None]] = [
        (from_file, None),
        ({t: parse_env_value(keys[t], text) for t, (_, text) in by_env.items()}, "env"),
        (dict(overrides or {}), None),
    ]
    valid: dict[tuple[str, str], Any] = {}
    bad_keys: dict[tuple[str, str], str] = {}
    layer_of: dict[tuple[str, str], int] = {}
    for index, (layer, kind) in enumerate(layers):
        for target, value in layer.items():
            try:
                valid[target] = validate_value(keys[target], value)
                layer_of[target] = index
            except ConfigError as exc:
                if target == HOSTS_KEY:
                    # One bad host does not throw away the others: the good ones run.
                    good, _ = parse_hosts(value)
                    if good:
                        valid[target], layer_of[target] = good, index
                found = exc.problems  # one, or one per bad host
                if kind == "env":
                    found = [f"{msg} (from {by_env[target][0]})" for msg in found]
                elif layer is from_file:
                    bad_keys[target] = "; ".join(found)
                problems += found
    if layer_of.get(API_URL_KEY, -1) > layer_of.get(HOSTS_KEY, -1):
        # `api_url` from a higher layer (the environment over the file) says where Ollama is:
        # it replaces the file's host list, as any override replaces the file's value.
        valid.pop(HOSTS_KEY, None)

    section_values: dict[str, dict[str, Any]] = {s: {} for s in _sections()}
    for (section, name), value in valid.items():
        section_values[section][name] = value
    base = Config()
    config = replace(
        base,
        **{s: replace(getattr(base, s), **vals) for s, vals in section_values.items() if vals},
    )
    return Loaded(config, problems, bad_keys, broken)


def _read_toml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str | None]:
    """The file's tables, or {} and why it cannot be used."""
    where = os.fspath(path)
    try:
        return tomlkit.parse(Path(path).read_text(encoding="utf-8")).unwrap(), None
    except FileNotFoundError:
        return {}, f"config file {where} not found"
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"config file {where} cannot be read: {exc}"
    except tomlkit.exceptions.ParseError as exc:
        return {}, f"config file {where} is not valid TOML: {exc}"


def _sections() -> list[str]:
    return [s.name for s in fields(Config)]


def read_dotenv(directory: str | os.PathLike[str] = ".") -> dict[str, str]:
    """Variables from `.env` in the directory, as the migration guide's `cp .env.example .env`."""
    from dotenv import dotenv_values

    path = Path(directory) / ".env"
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def effective_env(directory: str | os.PathLike[str] = ".") -> dict[str, str]:
    """The process environment laid over `.env` (the real environment wins)."""
    return {**read_dotenv(directory), **os.environ}


def env_example() -> str:
    """The text of `.env.example`, generated from the registry (a test keeps the file in sync)."""
    lines = [
        "# Environment overrides for chatbot-backend. Copy to .env and uncomment what you need.",
        "# Precedence: defaults < config.toml < .env < the process environment.",
        "# Short names kept from the Rust backend and the Next.js .env.local:",
    ]
    for alias, (section, name) in ENV_ALIASES.items():
        lines.append(f"# {alias}=  (same as CHATBOT_{section.upper()}_{name.upper()})")
    lines.append("# CHATBOT_CONFIG=path/to/config.toml  (same as --config)")
    current = None
    for key in registry():
        if key.section != current:
            current = key.section
            lines += ["", f"# [{current}]"]
        if key.type == "hosts":
            default = ""  # e.g. http://gpu1:11434,http://gpu2:11434, or a JSON list of tables
        elif key.type == "list":
            default = ",".join(key.default)
        else:
            default = _env_default(key.default)
        lines.append(f"# {key.help}")
        lines.append(f"# {key.env_name}={default}")
    return "\n".join(lines) + "\n"


def _env_default(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """The README's configuration table (a test checks the README carries exactly this)."""
    rows = [
        "| key | default | allowed | environment | meaning |",
        "|---|---|---|---|---|",
    ]
    for key in registry():
        default = _fmt(key.default).replace("|", "\\|")
        rows.append(
            f"| `{key.dotted}` | `{default}` | {_rule(key).removeprefix('must be ') or 'text'} "
            f"| `{key.env_name}` | {key.help} |"
        )
    return "\n".join(rows) + "\n"


_HEADER = """\
# Chatbot Companion — configuration.
# Every key is listed with its default. Environment variables override this file,
# CHATBOT_<SECTION>_<KEY> (e.g. CHATBOT_OLLAMA_MODEL), and PORT, HOST, CACHE_MAX_SIZE_MB,
# LOG_LEVEL.
"""


def default_toml() -> str:
    """The default configuration file, with a comment on every key (the shipped config.toml)."""
    lines = [_HEADER.rstrip("\n")]
    current = None
    for key in registry():
        if key.section != current:
            current = key.section
            lines += ["", f"[{current}]"]
        value = tomlkit.item(key.default).as_string()
        lines.append(f"{key.name} = {value}  # {key.help}")
        if (key.section, key.name) == HOSTS_KEY:
            lines += _HOSTS_EXAMPLE.rstrip("\n").split("\n")
    return "\n".join(lines) + "\n"


_HOSTS_EXAMPLE = """\
# Several Ollama servers behind this one gateway: delete `hosts = []` above and add one
# table per server (each after the other keys of [ollama]). A request goes to a host that has
# its model, preferring one that has it loaded, then the least busy. Without `models`, a host
# serves whatever it has; `max_concurrent` defaults to [queue].max_concurrent; `weight` (1)
# breaks ties. `api_url` is then not used.
# [[ollama.hosts]]
# url = "http://gpu1:11434"
# max_concurrent = 2
# [[ollama.hosts]]
# url = "http://gpu2:11434"
# max_concurrent = 1
# weight = 0.5
# models = ["llama3.2", "nomic-embed-text"]
"""


def env_overridden(env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """The settings the environment sets, each with the variable that sets it."""
    found = {target: alias for alias, target in ENV_ALIASES.items() if alias in env}
    for key in registry():
        if key.env_name in env:
            found[(key.section, key.name)] = key.env_name
    return found
