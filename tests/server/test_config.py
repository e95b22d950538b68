"""The configuration registry: defaults, the shipped file, env overrides, validation, docs."""

from __future__ import annotations

import re

import pytest
import tomlkit

from server import config as cfg
from tests.conftest import ROOT


def test_shipped_config_toml_is_the_registry_defaults():
    assert cfg.load(ROOT / "config.toml", env={}) == cfg.Config()


def test_every_key_in_config_toml_has_a_one_line_comment():
    text = (ROOT / "config.toml").read_text()
    doc = tomlkit.parse(text)
    for key in cfg.registry():
        assert key.name in doc[key.section], f"{key.dotted} missing from config.toml"
        line = next(ln for ln in text.splitlines() if re.match(rf"{key.name}\s*=", ln))
        assert "#" in line.split("=", 1)[1], f"{key.dotted} has no comment in config.toml"


def test_every_key_is_in_env_example_and_the_file_is_current():
    text = (ROOT / ".env.example").read_text()
    assert text == cfg.env_example(), "regenerate .env.example from server.config.env_example()"
    for key in cfg.registry():
        assert key.env_name in text


def test_every_key_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for key in cfg.registry():
        assert f"`{key.dotted}`" in readme, f"{key.dotted} is not in the README's config table"
        assert key.env_name in readme


@pytest.mark.parametrize(
    ("env", "section", "name", "expected"),
    [
        ({"PORT": "9090"}, "server", "port", 9090),
        ({"HOST": "0.0.0.0"}, "server", "host", "0.0.0.0"),
        ({"CACHE_MAX_SIZE_MB": "64"}, "cache", "max_size_mb", 64),
        ({"LOG_LEVEL": "debug"}, "logging", "level", "debug"),
        ({"NEXT_PUBLIC_OLLAMA_MODEL": "qwen3:4b"}, "ollama", "model", "qwen3:4b"),
        ({"CHATBOT_OLLAMA_MODEL": "mistral"}, "ollama", "model", "mistral"),
        ({"CHATBOT_CACHE_ENABLED": "false"}, "cache", "enabled", False),
        ({"CHATBOT_OLLAMA_TIMEOUT_SECONDS": "2.5"}, "ollama", "timeout_seconds", 2.5),
        (
            {"CHATBOT_CORS_ALLOWED_ORIGINS": "http://a.test, http://b.test"},
            "cors",
            "allowed_origins",
            ("http://a.test", "http://b.test"),
        ),
        ({"CHATBOT_CORS_ALLOWED_ORIGINS": '["*"]'}, "cors", "allowed_origins", ("*",)),
        # The namespaced name beats the short one.
        ({"PORT": "9090", "CHATBOT_SERVER_PORT": "9191"}, "server", "port", 9191),
    ],
)
def test_env_overrides(env, section, name, expected):
    conf = cfg.load(ROOT / "config.toml", env=env)
    assert getattr(getattr(conf, section), name) == expected


def test_every_key_can_be_set_from_its_env_variable():
    samples = {
        "str": "x",
        "int": None,
        "float": None,
        "bool": "true",
        "list": "*",
        "hosts": "http://a.test:1,http://b.test:2",
    }
    for key in cfg.registry():
        value = samples[key.type]
        if value is None:
            low = key.min if key.min is not None else 1
            value = str(low if key.type == "float" else int(low))
        if key.check == "url":
            value = "http://example.test:1234"
        elif key.check == "keep_alive":
            value = "5m"
        elif key.check == "keys":
            value = "ci:batch:sha256:" + "ab" * 32
        elif key.check == "header":
            value = "X-OpenWebUI-User-Id"
        elif key.check == "redis_url":
            value = "redis://example.test:6379/0"
        elif key.choices:
            value = key.choices[-1]
        conf = cfg.load(None, env={key.env_name: value})
        got = getattr(getattr(conf, key.section), key.name)
        assert got == cfg.validate_value(key, cfg.parse_env_value(key, value)), key.dotted


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nport = 99999", "[server].port = 99999: must be a whole number 1..65535"),
        ('[server]\nport = "80"', '[server].port = "80": must be a whole number 1..65535'),
        ('[cache]\nenabled = "yes"', '[cache].enabled = "yes": must be true or false'),
        ("[cache]\nmax_size_mb = 0", "[cache].max_size_mb = 0: must be a whole number 1..65536"),
        ("[queue]\nmax_concurrent = 1.5", "[queue].max_concurrent = 1.5: must be a whole number"),
        (
            '[ollama]\napi_url = "localhost:11434"',
            '[ollama].api_url = "localhost:11434": must be an http:// or https:// URL',
        ),
        ('[ollama]\nkeep_alive = "forever"', '[ollama].keep_alive = "forever": must be a duration'),
        ('[ollama]\nmodel = "  "', '[ollama].model = "  ": must not be empty'),
        (
            '[logging]\nlevel = "loud"',
            '[logging].level = "loud": one of debug, info, warning, error',
        ),
        ('[cors]\nallowed_origins = "*"', '[cors].allowed_origins = "*": must be a list'),
        ('[cors]\nallowed_origins = ["http://a.test/path"]', "is not an origin"),
        (
            "[cache]\nmax_sise_mb = 5",
            "[cache].max_sise_mb: unknown key (keys of [cache] are "
            "enabled, max_size_mb, ttl_seconds, scope, backend, disk_path, disk_max_size_mb, "
            "redis_url)",
        ),
        ("[caches]\nenabled = true", "[caches]: unknown section"),
        ("port = 5", "[port]: unknown top-level key"),
        ("[server\nport = 1", "is not valid TOML"),
    ],
)
def test_bad_file_values_name_key_value_and_rule(tmp_path, toml, message):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path, env={})
    assert len(info.value.problems) == 1
    assert message in info.value.problems[0]


def test_bad_env_values_name_the_variable():
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(
            None, env={"PORT": "http", "CHATBOT_CACHE_TTL_SECONDS": "-5", "CHATBOT_CACHE_SIZE": "1"}
        )
    problems = info.value.problems
    assert '[server].port = "http": must be a whole number 1..65535 (from PORT)' in problems
    assert (
        "[cache].ttl_seconds = -5: must be a whole number 1..31536000 "
        "(from CHATBOT_CACHE_TTL_SECONDS)" in problems
    )
    assert any(p.startswith("CHATBOT_CACHE_SIZE: unknown setting") for p in problems)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load(tmp_path / "nope.toml", env={})


def test_dotenv_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("PORT=7070\nCHATBOT_OLLAMA_MODEL=from-dotenv\n")
    monkeypatch.setenv("CHATBOT_OLLAMA_MODEL", "from-env")
    env = cfg.effective_env(tmp_path)
    conf = cfg.load(None, env=env)
    assert conf.server.port == 7070
    assert conf.ollama.model == "from-env"


def test_print_config_round_trips():
    conf = cfg.load(None, env={"CHATBOT_OLLAMA_MODEL": "qwen3:4b", "PORT": "9000"})
    again = tomlkit.parse(conf.to_toml()).unwrap()
    assert again["ollama"]["model"] == "qwen3:4b"
    assert again["server"]["port"] == 9000
    assert set(again) == {
        "server",
        "ollama",
        "cache",
        "queue",
        "batch",
        "cors",
        "auth",
        "logging",
    }


def test_readme_config_table_is_generated_from_the_registry():
    assert cfg.markdown_table() in (ROOT / "README.md").read_text()


def test_shipped_config_toml_is_generated_from_the_registry():
    # The desktop app writes default_toml() as a user's first config file: the same text.
    assert (ROOT / "config.toml").read_text() == cfg.default_toml()


def test_lenient_load_keeps_the_files_good_values_and_names_the_bad_ones(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[server]\nport = 9123\n[ollama]\napi_url = 'http://gpu.lan:11434'\n"
        "[cache]\nttl_seconds = -5\nmax_size_mb = 64\nwhat = 1\n"
    )
    result = cfg.load_lenient(path, env={"CHATBOT_QUEUE_MAX_CONCURRENT": "0"})
    conf = result.config
    assert (conf.server.port, conf.ollama.api_url, conf.cache.max_size_mb) == (
        9123,
        "http://gpu.lan:11434",
        64,
    )
    assert conf.cache.ttl_seconds == 3600  # the default stands in for -5
    assert conf.queue.max_concurrent == 1  # and for the environment's bad value
    assert result.bad_keys == {
        ("cache", "ttl_seconds"): "[cache].ttl_seconds = -5: must be a whole number 1..31536000"
    }
    assert not result.broken
    assert len(result.problems) == 3
    assert any(p.startswith("[cache].what: unknown key") for p in result.problems)
    assert any(p.endswith("(from CHATBOT_QUEUE_MAX_CONCURRENT)") for p in result.problems)
    with pytest.raises(cfg.ConfigError):  # the strict loader the headless server uses
        cfg.load(path, env={})


def test_lenient_load_of_a_file_that_is_not_toml_runs_on_defaults_and_environment(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[server\nport = 1")
    result = cfg.load_lenient(path, env={"PORT": "9000"})
    assert result.broken
    assert result.config == cfg.Config(server=cfg.ServerSection(port=9000))
    assert "is not valid TOML" in result.problems[0]
