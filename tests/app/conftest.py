"""GUI test fixtures: one session-wide qasync loop on pytest-qt's QApplication, a simulator and
the companion app on it, real sockets throughout."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import qasync

from app.companion import Companion
from app.config_manager import ConfigManager, values_of
from app.controller import Controller
from server import config_file, simulator
from server.config import default_toml
from tests.conftest import make_config


@pytest.fixture(scope="session")
def qloop(qapp) -> Iterator[asyncio.AbstractEventLoop]:
    # already_running: the loop runs whenever Qt processes events (qtbot.waitUntil & co.).
    # Never stop() it in a test: that would quit the QApplication for every later test.
    loop = qasync.QEventLoop(qapp, already_running=True)
    # asyncio.to_thread's workers are QThreads here: own them, to stop them before Qt goes.
    executor = qasync.QThreadExecutor(2)
    loop.set_default_executor(executor)
    asyncio.set_event_loop(loop)
    yield loop
    executor.shutdown(wait=True)


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path_factory, monkeypatch) -> None:
    """The desktop app keeps answers in a SQLite file in the platform cache directory
    ([cache].backend auto): each test gets its own, never the user's or another test's. Not
    under tmp_path, where the config file is: its folder is watched for outside edits."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture
def run(qtbot, qloop) -> Callable[..., Any]:
    """Run a coroutine on the shared loop while Qt keeps processing events."""

    def _run(coro: Coroutine[Any, Any, Any], timeout: int = 15_000) -> Any:
        task = qloop.create_task(coro)
        qtbot.waitUntil(task.done, timeout=timeout)
        return task.result()

    return _run


@pytest.fixture
def sim_url(run) -> Iterator[str]:
    settings = simulator.SimulatorSettings(tokens=12, token_delay_ms=2, first_token_delay_ms=2)
    runner, port = run(simulator.start(settings))
    yield f"http://127.0.0.1:{port}"
    run(runner.cleanup())


class App:
    """A running companion and what tests need to reach it."""

    def __init__(self, companion: Companion, task: asyncio.Task[None]) -> None:
        self.companion = companion
        self.task = task

    @property
    def controller(self) -> Controller:
        return self.companion.controller

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.controller.host.port}"


@pytest.fixture
def start_app(qtbot, qloop, sim_url, tmp_path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def start(
        *, tray: bool = False, port: int | None = 0, file_text: str | None = None, **overrides: Any
    ) -> App:
        """port: 0 binds any free port (the default); None uses the config's port.

        file_text: start as the app does from a user's file holding this text (loaded with
        the simulator's URL pinned as if from the command line); else from the shipped default
        with `overrides` saved in it."""
        overrides.setdefault("ollama__api_url", sim_url)
        overrides.setdefault("ollama__warm_up", False)
        overrides.setdefault("ollama__probe_interval_seconds", 1)
        path = tmp_path / "config.toml"
        loaded = None
        if file_text is None:
            config = make_config(**overrides)
            # The user's file says what runs: the shipped default with these values in it.
            path.write_text(default_toml())
            config_file.save(path, values_of(config))
            manager = ConfigManager(path)
        else:
            path.write_text(file_text)
            pins = {tuple(k.split("__")): v for k, v in overrides.items()}
            manager = ConfigManager(path, pins)  # type: ignore[arg-type]
            loaded = manager.load_initial(create=False)
            config = loaded.config
        controller = Controller(
            config,
            path,
            port_override=port,
            drain_seconds=1,
            config_problems=loaded.problems if loaded else None,
        )
        companion = Companion(controller, manager, tray_available=tray, loaded=loaded)
        task = qloop.create_task(companion.run())
        app = App(companion, task)
        apps.append(app)
        qtbot.waitUntil(
            lambda: controller.state in ("serving", "failed", "ollama_down"), timeout=10_000
        )
        return app

    yield start
    for app in apps:
        app.companion.quit()
        qtbot.waitUntil(app.task.done, timeout=15_000)
        app.task.result()  # re-raises anything that went wrong during shutdown
        app.companion.dashboard.close()
        app.companion.dashboard.deleteLater()
