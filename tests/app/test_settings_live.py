"""Settings applied live: through the Settings page, over HTTP, from an editor, and on failure;
an API key created on the page, saved and used."""

from __future__ import annotations

import logging
import socket
import stat

import aiohttp
import tomlkit

from app.config_manager import values_of
from app.dashboard.requests_model import COLUMNS
from app.settings.keys import KeysEditor
from server.auth import digest
from server.config import default_toml
from tests.conftest import free_port

CHAT = "/api/chat-optimized"


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        await r.read()
        return r.status, dict(r.headers)


def save(app, qtbot, **changes) -> None:
    """Save through the manager what the Settings page's Save would send."""
    values = values_of(app.controller.gateway.config)
    for dotted, value in changes.items():
        section, name = dotted.split("__")
        values[(section, name)] = value
    task = app.companion.config_manager.save(values)
    qtbot.waitUntil(task.done, timeout=5000)
    task.result()


def test_save_from_the_page_applies_cache_queue_and_cors_without_restart(start_app, run, qtbot):
    app = start_app(tray=True)
    page = app.companion.dashboard.settings
    port = app.controller.host.port
    origin = "http://new-frontend.test:5173"
    assert run(get(app.url + "/health", {"Origin": origin}))[0] == 403

    page.field("cache", "max_size_mb").setValue(64)
    page.field("queue", "max_concurrent").setValue(3)
    origins = page.values()[("cors", "allowed_origins")]
    page.field("cors", "allowed_origins").set_value([*origins, origin])
    page.field("cache", "max_size_mb").setValue(65)
    assert page.save_button.isEnabled()
    page.save_button.click()

    qtbot.waitUntil(lambda: app.controller.gateway.config.cache.max_size_mb == 65, timeout=5000)
    gateway = app.controller.gateway
    assert gateway.cache.stats()["max_size_mb"] == 65
    assert gateway.queue.max_concurrent == 3
    status, headers = run(get(app.url + "/health", {"Origin": origin}))
    assert status == 200 and headers["Access-Control-Allow-Origin"] == origin
    assert app.controller.host.port == port  # no restart was needed
    assert app.controller.state == "serving"
    text = (app.controller.config_path).read_text()
    assert "max_size_mb = 65  # Memory budget of the response cache, in MiB" in text


def test_port_change_restarts_onto_the_new_port(start_app, run, qtbot):
    old_port, new_port = free_port(), free_port()
    app = start_app(port=None, server__port=old_port)
    assert app.controller.host.port == old_port
    states = []
    app.controller.state_changed.connect(lambda s, _m: states.append(s))
    save(app, qtbot, server__port=new_port)
    qtbot.waitUntil(lambda: states[-2:] == ["starting", "serving"], timeout=10_000)
    assert app.controller.host.port == new_port
    assert run(get(f"http://127.0.0.1:{new_port}/health"))[0] == 200
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", old_port)) != 0


def test_an_outside_edit_is_picked_up(start_app, qtbot):
    app = start_app()
    path = app.controller.config_path
    text = path.read_text().replace("max_concurrent = 1", "max_concurrent = 4")
    assert "max_concurrent = 4" in text
    path.write_text(text)  # as an editor would
    qtbot.waitUntil(lambda: app.controller.gateway.queue.max_concurrent == 4, timeout=5000)
    page = app.companion.dashboard.settings
    qtbot.waitUntil(lambda: page.values()[("queue", "max_concurrent")] == 4, timeout=2000)


def test_a_broken_outside_edit_is_reported_and_the_last_good_config_keeps_running(
    start_app, qtbot, caplog
):
    app = start_app()
    page = app.companion.dashboard.settings
    problems: list[list[str]] = []
    app.companion.config_manager.file_problems.connect(lambda p, _title: problems.append(p))
    path = app.controller.config_path
    caplog.set_level(logging.INFO, logger="chatbot")
    path.write_text(path.read_text().replace("max_size_mb = 256", "max_size_mb = 0"))
    qtbot.waitUntil(lambda: bool(problems and problems[-1]), timeout=5000)
    assert problems[-1][0] == "[cache].max_size_mb = 0: must be a whole number 1..65536"
    assert app.controller.gateway.config.cache.max_size_mb == 256
    assert app.controller.state == "serving"
    # The page says what runs, the field is marked, and the log has it at warning level.
    assert "still running the configuration it had before" in page.file_problems_text()
    assert "The file's value 0 is not used" in page.field_warning("cache", "max_size_mb")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("[cache].max_size_mb = 0" in r.getMessage() for r in warned)


def test_a_failed_write_leaves_the_file_and_says_so(start_app, qtbot, monkeypatch):
    app = start_app()
    path = app.controller.config_path
    before = path.read_text()
    statuses: list[tuple[str, str]] = []
    app.companion.config_manager.status.connect(lambda t, k: statuses.append((t, k)))

    def read_only(*_args, **_kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("server.config_file.os.replace", read_only)
    values = values_of(app.controller.gateway.config)
    values[("cache", "max_size_mb")] = 64
    task = app.companion.config_manager.save(values)
    qtbot.waitUntil(task.done, timeout=5000)
    assert statuses[-1][1] == "error"
    assert "Read-only file system" in statuses[-1][0]
    assert "left as it was" in statuses[-1][0]
    assert path.read_text() == before
    assert app.controller.gateway.config.cache.max_size_mb == 256  # nothing applied


def test_test_connection_reports_version_and_models(start_app, qtbot, sim_url):
    app = start_app()
    manager = app.companion.config_manager
    results: list[tuple[bool, str]] = []
    models: list[list[str]] = []
    manager.connection_result.connect(lambda ok, text: results.append((ok, text)))
    manager.models.connect(models.append)
    task = manager.test_connection(sim_url)
    qtbot.waitUntil(task.done, timeout=5000)
    assert results[-1] == (True, "Ollama 0.33.0 · 1 model(s)")
    assert models[-1] == ["llama3.2:latest"]
    dead = f"http://127.0.0.1:{free_port()}"
    task = manager.test_connection(dead)
    qtbot.waitUntil(task.done, timeout=5000)
    assert results[-1][0] is False and f"Ollama not reachable at {dead}" in results[-1][1]


def _file_values(text: str) -> dict[tuple[str, str], object]:
    doc = tomlkit.parse(text).unwrap()
    return {(s, n): v for s, table in doc.items() for n, v in table.items()}


def test_a_bad_value_at_start_up_keeps_the_files_other_values_and_a_save_only_the_edit(
    start_app, qtbot
):
    port = free_port()
    user_text = (
        default_toml()
        .replace("port = 8080", f"port = {port}")
        .replace('model = "llama3.2"', 'model = "qwen3:4b"')
        .replace("max_size_mb = 256", "max_size_mb = 64")
        .replace("ttl_seconds = 3600", "ttl_seconds = -5")
        .replace("max_queue_size = 100", "max_queue_size = 7")
    )
    app = start_app(port=None, file_text=user_text)
    page = app.companion.dashboard.settings
    config = app.controller.gateway.config
    # It runs on the file's values, with the default only where the file is wrong...
    assert app.controller.host.port == port
    assert (config.ollama.model, config.cache.max_size_mb, config.queue.max_queue_size) == (
        "qwen3:4b",
        64,
        7,
    )
    assert config.cache.ttl_seconds == 3600
    # ...and the page says so, shows those values and marks the bad one.
    problems = page.file_problems_text()
    assert "running on its other values, with the default for each value below" in problems
    assert "[cache].ttl_seconds = -5" in problems
    assert page.field("server", "port").value() == port
    assert page.field("cache", "max_size_mb").value() == 64
    assert "The file's value -5 is not used" in page.field_warning("cache", "ttl_seconds")
    assert page.save_button.isEnabled()  # the marked value is an unsaved change

    page.field("queue", "max_concurrent").setValue(2)
    page.save_button.click()
    qtbot.waitUntil(lambda: app.controller.gateway.queue.max_concurrent == 2, timeout=5000)
    after = app.controller.config_path.read_text()
    before_values, after_values = _file_values(user_text), _file_values(after)
    changed = {k for k in before_values if before_values[k] != after_values[k]}
    assert changed == {("queue", "max_concurrent"), ("cache", "ttl_seconds")}
    assert after_values[("cache", "ttl_seconds")] == 3600  # the value shown, now valid
    assert after_values[("server", "port")] == port  # every other key keeps its value
    assert after_values[("ollama", "api_url")] == "http://localhost:11434"  # not the pinned one
    assert page.file_problems_text() == ""
    assert page.field_warning("cache", "ttl_seconds") == ""
    assert not page.save_button.isEnabled()


def test_a_file_that_is_not_toml_is_left_untouched_until_the_user_confirms(start_app, qtbot):
    broken = "[server\nport = 9000\n# a hand edit gone wrong\n"
    app = start_app(file_text=broken)
    page = app.companion.dashboard.settings
    path = app.controller.config_path
    assert app.controller.gateway.config.cache.max_size_mb == 256  # the defaults run
    assert "cannot be used; running on the built-in defaults" in page.file_problems_text()
    assert page.open_file_button.isVisibleTo(page)
    assert not page.replace_button.isVisibleTo(page)

    page.field("queue", "max_concurrent").setValue(3)
    page.save_button.click()
    qtbot.waitUntil(lambda: page.replace_button.isVisibleTo(page), timeout=5000)
    assert path.read_text() == broken  # not a byte changed
    assert "Not saved" in page.status_text()
    assert "not valid TOML: a Save would replace all of it" in page.file_problems_text()
    assert app.controller.gateway.queue.max_concurrent == 1  # nothing applied

    page.replace_button.click()  # the user confirms
    qtbot.waitUntil(lambda: app.controller.gateway.queue.max_concurrent == 3, timeout=5000)
    assert _file_values(path.read_text())[("queue", "max_concurrent")] == 3
    assert path.with_name("config.toml.bak").read_text() == broken
    assert page.file_problems_text() == ""


def test_a_save_keeps_the_files_permissions(start_app, qtbot):
    app = start_app()
    path = app.controller.config_path
    path.chmod(0o644)
    save(app, qtbot, cache__ttl_seconds=600)
    assert "ttl_seconds = 600" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_values_set_by_the_environment_are_not_copied_into_the_file(start_app, qtbot, monkeypatch):
    app = start_app()
    monkeypatch.setenv("CHATBOT_QUEUE_MAX_CONCURRENT", "3")
    statuses: list[str] = []
    app.companion.config_manager.status.connect(lambda t, _k: statuses.append(t))
    save(app, qtbot, cache__ttl_seconds=600)
    text = app.controller.config_path.read_text()
    assert "ttl_seconds = 600" in text
    assert "max_concurrent = 1" in text  # the file keeps its own value
    assert app.controller.gateway.queue.max_concurrent == 3  # the environment wins, as at start
    assert "[queue].max_concurrent (CHATBOT_QUEUE_MAX_CONCURRENT)" in statuses[-1]


def test_model_change_takes_effect_on_the_next_chat(start_app, run, qtbot):
    from server import simulator

    sim, port = run(
        simulator.start(
            simulator.SimulatorSettings(
                tokens=4,
                token_delay_ms=0,
                first_token_delay_ms=0,
                models=("llama3.2:latest", "qwen3:4b"),
            )
        )
    )
    try:
        app = start_app(ollama__api_url=f"http://127.0.0.1:{port}")

        async def chat() -> str:
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    app.url + CHAT,
                    json={"messages": [{"role": "user", "content": "hi"}], "stream": False},
                ) as r,
            ):
                return (await r.json())["model"]

        assert run(chat()) == "llama3.2"
        save(app, qtbot, ollama__model="qwen3:4b", ollama__system_prompt="Be brief.")
        assert run(chat()) == "qwen3:4b"
    finally:
        run(sim.cleanup())


async def chat_as(url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url + CHAT,
            json={"messages": [{"role": "user", "content": "hi"}], "stream": False},
            headers=headers,
        ) as r,
    ):
        await r.read()
        return r.status


def test_a_key_created_on_the_page_is_saved_as_a_hash_and_names_its_requests(
    start_app, run, qtbot, caplog
):
    caplog.set_level(logging.DEBUG, logger="chatbot")
    app = start_app()
    window = app.companion.dashboard
    page = window.settings
    path = app.controller.config_path
    before = _file_values(path.read_text())
    assert run(chat_as(app.url, None)) == 200  # no keys yet: open, as before

    editor = page.field("auth", "keys")
    assert isinstance(editor, KeysEditor)
    editor.create_button.click()
    dialog = editor.dialog
    assert dialog is not None
    qtbot.keyClicks(dialog.name_field, "ci-runner")
    dialog.create_button.click()
    key = dialog.shown_key()
    dialog.done_button.click()
    qtbot.waitUntil(lambda: editor.dialog is None, timeout=1000)
    page.save_button.click()
    qtbot.waitUntil(lambda: bool(app.controller.gateway.keys), timeout=5000)

    # The file gained that one entry (the hash, never the key); every other value is as it was.
    text = path.read_text()
    after = _file_values(text)
    assert {k for k in after if after[k] != before[k]} == {("auth", "keys")}
    assert after[("auth", "keys")] == [f"ci-runner:user:sha256:{digest(key)}"]
    assert key not in text
    assert "[auth].keys" in page.status_text()  # applied without a restart
    # The running gateway wants the key now, and the dashboard says whose requests these are.
    assert run(chat_as(app.url, None)) == 401
    assert run(chat_as(app.url, key)) == 200
    user = COLUMNS.index("User")
    model = window.requests_model
    qtbot.waitUntil(
        lambda: model.rowCount() == 2 and model.cell(0, user) == "ci-runner", timeout=5000
    )
    assert model.cell(1, user) == "anonymous"  # the request from before the key
    assert window.breakdown.line_visible("users")
    assert [c.name for c in window.breakdown.shown("users")] == ["anonymous", "ci-runner"]
    assert key not in caplog.text
