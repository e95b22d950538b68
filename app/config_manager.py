"""The desktop app's configuration: load, save from the Settings page, apply live, watch the file.

What can change at run time is applied through the Gateway at once (cache size, TTL and switch,
queue limits, batch settings, CORS origins, model, system prompt, Ollama URL, hosts and timeouts,
log level); a new host or port restarts the server, after saying so, and when the controller
reports the restart over (restart_ended) the status line says how it went. An edit made in an
editor while the app runs is picked up: applied when valid, reported (first the key, value and
reason) when not, and the last good configuration keeps running. Nothing here blocks the loop:
file reads and writes run in a worker thread.

At start-up a file with a bad value is not thrown away: the app runs on the file's other values
(defaults stand in for the bad ones, which the Settings page marks), and a Save writes only what
the user edited plus the marked keys. A file that is not TOML at all runs on the defaults and is
never overwritten until the user confirms it on the page.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Signal

from app.controller import Controller
from app.resources import default_config_text
from server import config_file
from server.config import (
    API_URL_KEY,
    HOSTS_KEY,
    Config,
    ConfigError,
    HostSpec,
    Loaded,
    env_overridden,
    load_lenient,
    parse_env_value,
    registry,
    validate_value,
)
from server.errors import GatewayError
from server.logs import setup_logging
from server.services.ollama import OllamaClient

log = logging.getLogger("chatbot.ui")

Values = dict[tuple[str, str], Any]


def desktop_env() -> dict[str, str]:
    """The environment the desktop app's settings read: the process's own, without `.env`.

    The headless server reads `.env` from its working directory (the migration guide's
    `cp .env.example .env`); the tray app starts in the user's home or wherever the menu puts
    it, where a `.env` belongs to some other project (PORT=3000 is common) and must not steer it.
    """
    return dict(os.environ)


def values_of(config: Config) -> Values:
    return {(k.section, k.name): getattr(getattr(config, k.section), k.name) for k in registry()}


def plain(value: Any) -> Any:
    """A value as the file holds it: lists, and host tables as dicts (for comparing)."""
    if isinstance(value, tuple | list):
        return [v.to_dict() if isinstance(v, HostSpec) else v for v in value]
    return value


def pinned_keys(env: dict[str, str], overrides: Values) -> dict[tuple[str, str], str]:
    """The keys the environment or the command line set, each with what sets it. An api_url
    set there also sets the hosts: it replaces the file's host list (server.config.load_lenient)."""
    pins = {**env_overridden(env), **{k: "the command line" for k in overrides}}
    if API_URL_KEY in pins and HOSTS_KEY not in pins:
        pins[HOSTS_KEY] = f"{pins[API_URL_KEY]} for [ollama].api_url"
    return pins


def changed_keys(old: Config, new: Config) -> list[str]:
    a, b = values_of(old), values_of(new)
    return [f"[{s}].{n}" for (s, n) in a if a[(s, n)] != b[(s, n)]]


def outside_sources(env: dict[str, str], overrides: Values) -> dict[tuple[str, str], str]:
    """The keys whose running value the file does not set, each with what sets it: the command
    line, or an environment variable whose value is valid (an invalid one is reported as a
    problem and does not run, so it sets nothing)."""
    keys = {(k.section, k.name): k for k in registry()}
    found: dict[tuple[str, str], str] = {}
    for target, var in env_overridden(env).items():
        try:
            validate_value(keys[target], parse_env_value(keys[target], env[var]))
        except ConfigError:
            continue
        found[target] = f"the environment variable {var}"
    for target in overrides:
        found[target] = "the command line"
    if API_URL_KEY in found and HOSTS_KEY not in found:
        # load_lenient lets an api_url from outside the file replace the file's host list.
        found[HOSTS_KEY] = f"{found[API_URL_KEY]} for [ollama].api_url"
    return found


def problems_title(loaded: Loaded, *, live: bool) -> str:
    """What runs while the file has errors: said as it is, not as one might hope."""
    if live:
        return (
            "The config file changed but has errors; still running the configuration it had before:"
        )
    if loaded.broken:
        return (
            "The config file cannot be used; running on the built-in defaults "
            "(and settings from the environment or command line):"
        )
    if loaded.bad_keys:
        return (
            "The config file has errors; running on its other values, with the default for "
            "each value below (marked in the form):"
        )
    return "The configuration has errors; what is listed below is ignored:"


class ConfigManager(QObject):
    status = Signal(str, str)  # text, kind (info, ok, error)
    file_problems = Signal(list, str)  # the file's errors ([] when it is fine), a title
    # {(section, name): problem}: keys whose value in the file is not used; a Save writes them.
    flagged = Signal(object)
    # The file is not TOML: a Save was refused until the user confirms replacing it.
    confirm_replace = Signal(str)
    # object, not dict: Qt would turn a dict into a map with string keys only.
    form_values = Signal(object)  # {(section, name): value}, what the Settings form shows
    # {(section, name): what sets it}: keys the environment or the command line set, not the file.
    sources = Signal(object)
    raw_toml = Signal(str, str)  # effective TOML, path
    connection_result = Signal(bool, str)
    models = Signal(list)

    def __init__(self, path: Path, overrides: Values | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.overrides = overrides or {}
        self.controller: Controller | None = None
        self._last_text: str | None = None
        self._loaded: Loaded | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # The status line's text before "Restarting the server…", while that restart runs.
        self._restart_news: str | None = None
        self._watcher = QFileSystemWatcher(self)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)  # editors write in several steps
        self._debounce.timeout.connect(lambda: self._spawn(self._reload_from_disk()))
        self._watcher.fileChanged.connect(lambda _p: self._debounce.start())
        self._watcher.directoryChanged.connect(lambda _p: self._debounce.start())

    # -- start-up ---------------------------------------------------------------------------

    def load_initial(self, *, create: bool) -> Loaded:
        """The configuration to start with and what is wrong with it: bad values are skipped
        (their defaults run), a file that is not TOML gives the defaults; the file is left as
        it is either way. Runs before the loop does."""
        if create and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(default_config_text(), encoding="utf-8")
            log.info("created %s from the defaults", self.path)
        try:
            self._last_text = self.path.read_text(encoding="utf-8")
        except OSError:
            self._last_text = None
        self._loaded = load_lenient(self.path, env=desktop_env(), overrides=self.overrides)
        return self._loaded

    def attach(self, controller: Controller, loaded: Loaded | None = None) -> None:
        """Start watching the file and tell the Settings page what runs and what is wrong."""
        self.controller = controller
        controller.restart_ended.connect(self._restart_over)
        self._watcher.addPath(str(self.path.parent))
        if self.path.exists():
            self._watcher.addPath(str(self.path))
        loaded = loaded or self._loaded
        self._publish(controller.gateway.config)
        if loaded is not None and loaded.problems:
            self.file_problems.emit(loaded.problems, problems_title(loaded, live=False))
            self.flagged.emit(dict(loaded.bad_keys))
        else:
            self.file_problems.emit([], "")

    # -- the Settings page's commands -------------------------------------------------------

    def save(self, values: Values, *, replace_broken: bool = False) -> asyncio.Task[None]:
        """Write `values` (the keys the user edited, and the marked ones) into the file; every
        other key keeps what the file says. `replace_broken`: the user confirmed replacing a
        file that is not TOML (its text is kept as .bak)."""
        return self._spawn(self._save(values, replace_broken))

    async def _save(self, values: Values, replace_broken: bool = False) -> None:
        # A value the environment or the command line sets is shown in the form as it runs;
        # left untouched there, it must not be copied into the file.
        running = values_of(self.controller.gateway.config) if self.controller else {}
        pinned = pinned_keys(desktop_env(), self.overrides)
        values = {
            k: v
            for k, v in values.items()
            if not (k in pinned and plain(v) == plain(running.get(k)))
        }
        try:
            in_file = await asyncio.to_thread(
                config_file.save, self.path, values, replace_broken=replace_broken
            )
            self._last_text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
            self._watch_file()
            loaded = load_lenient(self.path, env=desktop_env(), overrides=self.overrides)
        except config_file.BrokenConfigFile as exc:
            log.warning("config not saved: %s is not valid TOML (%s)", exc.path, exc.reason)
            self._say(f"Not saved: {exc.path} was left as it is.", "error")
            self.confirm_replace.emit(
                f"{exc.path}: {exc.reason}.\nOpen it in the editor to fix it, or replace it with "
                f"the settings shown here (its text is kept as {exc.path.name}.bak)."
            )
            return
        except ConfigError as exc:
            self._say(f"Not saved: {exc.problems[0]}", "error")
            return
        except OSError as exc:
            self._say(f"Could not save: {exc.strerror or exc}", "error")
            return
        new = loaded.config
        self._loaded = loaded
        # What the file holds now is valid; what the environment sets may still not be.
        self.file_problems.emit(
            loaded.problems, problems_title(loaded, live=False) if loaded.problems else ""
        )
        self.flagged.emit({})
        self._apply(new, "Saved")
        kept = [
            f"[{s}].{n} ({pinned[(s, n)]})"
            for (s, n) in pinned
            if values_of(in_file)[(s, n)] != values_of(new)[(s, n)]
        ]
        if kept:
            # PORT=… in the environment or --port on the command line beat the file.
            self._say(
                f"Saved. These are set outside the file and keep their values: {', '.join(kept)}.",
                "info",
            )

    def test_connection(self, url: str) -> asyncio.Task[None]:
        return self._spawn(self._test_connection(url))

    async def _test_connection(self, url: str) -> None:
        client = OllamaClient(url.strip(), timeout_s=10, connect_timeout_s=3)
        try:
            await client.start()
            version = await client.get_version()
            names = [m.get("name", "") for m in await client.list_models()]
        except GatewayError as exc:
            self.connection_result.emit(False, exc.message)
            return
        except ValueError as exc:
            self.connection_result.emit(False, f"not a usable URL: {exc}")
            return
        finally:
            await client.close()
        self.connection_result.emit(True, f"Ollama {version} · {len(names)} model(s)")
        self.models.emit(names)

    async def refresh_models(self) -> None:
        if self.controller is None:
            return
        # Every host's models (the union), as routing sees them.
        overview = await self.controller.gateway.models_overview()
        if overview["installed"] is None:
            return  # unreachable now: the model field still takes any name
        self.models.emit(list(overview["installed"]))

    def open_file(self) -> None:
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path)))

    # -- applying ---------------------------------------------------------------------------

    def _apply(self, new: Config, verb: str) -> None:
        controller = self.controller
        assert controller is not None
        changed = changed_keys(controller.gateway.config, new)
        restart = controller.gateway.apply_config(new)
        setup_logging(new.logging.level)
        self._publish(new)
        live = [k for k in changed if k not in restart]
        parts = [f"{verb}."]
        parts.append(f"Applied without a restart: {', '.join(live)}." if live else "")
        if not changed:
            parts.append("Nothing changed.")
        said = " ".join(p for p in parts if p)
        log.info("config %s: %s", verb.lower(), ", ".join(changed) or "no change")
        if restart:
            # When the restart is over, the line says how it went instead (_restart_over).
            self._say(
                f"{said} Restarting the server for {', '.join(restart)} "
                f"(now {new.server.host}:{new.server.port})…",
                "ok",
                restart_news=said,
            )
            controller.restart_server()
        else:
            self._say(said, "ok")
        self._spawn(self.refresh_models())

    def _restart_over(self, ok: bool, detail: str) -> None:
        """A restart ended (the controller's restart_ended): if the status line still speaks of
        the one a save started, it now says how it went."""
        news, self._restart_news = self._restart_news, None
        if news is None:
            return  # a restart from the tray or the dashboard; or the line has moved on
        if ok:
            self._say(f"{news} Server restarted. Serving on {detail}.", "ok")
        else:
            self._say(f"{news} The restart failed: {detail}", "error")

    def form_edited(self, dirty: bool) -> None:
        """The Settings form was edited after a save (its dirty_changed): the page cleared its
        "Saved…" line, and the restart's outcome is no longer news for it."""
        if dirty:
            self._restart_news = None

    def _say(self, text: str, kind: str, *, restart_news: str | None = None) -> None:
        """The status line; what it said before is old news, a restart's outcome included.
        `restart_news`: the text the restart's outcome goes after, once it ends."""
        # Set before the signal: an edit that clears the line while it is shown forgets it.
        self._restart_news = restart_news
        self.status.emit(text, kind)

    def _publish(self, config: Config) -> None:
        self.form_values.emit(values_of(config))
        self.sources.emit(outside_sources(desktop_env(), self.overrides))
        self.raw_toml.emit(config.to_toml(), str(self.path))

    # -- outside edits ----------------------------------------------------------------------

    async def _reload_from_disk(self) -> None:
        self._watch_file()
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except OSError:
            return  # deleted or mid-rename: the next change event brings it back
        if text == self._last_text:
            return  # our own save, or a touch without a change
        self._last_text = text
        loaded = load_lenient(self.path, env=desktop_env(), overrides=self.overrides)
        if loaded.problems:
            for problem in loaded.problems:
                log.warning("config file %s changed but has errors: %s", self.path, problem)
            self.file_problems.emit(loaded.problems, problems_title(loaded, live=True))
            self.flagged.emit(dict(loaded.bad_keys))
            # The problems box says it all (title and every error): the status line repeating
            # its first error made two red banners with one text. Whatever the line said (the
            # last "Saved") is older news than this edit.
            self._say("", "info")
            if self.controller is not None:
                self.controller.notify.emit("Config file has errors", loaded.problems[0])
            return
        self._loaded = loaded
        self.file_problems.emit([], "")
        self.flagged.emit({})
        self._apply(loaded.config, "Reloaded the edited file")

    def _watch_file(self) -> None:
        # An atomic save replaces the file, and the watcher loses it: watch the new one.
        if self.path.exists() and str(self.path) not in self._watcher.files():
            self._watcher.addPath(str(self.path))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
