"""Saving the config file: comments kept, validated first, atomic, with a backup."""

from __future__ import annotations

import errno

import pytest

from server import config as cfg
from server.config_file import ConfigWriteError, render, save
from tests.conftest import ROOT

USER_FILE = """\
# my own notes on top
[server]
port = 8080  # the frontend expects this

[cache]
# bigger: lots of repeated questions here
max_size_mb = 512
"""


def test_save_keeps_comments_and_order_and_changes_only_what_changed(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    conf = save(
        path,
        {
            ("cache", "max_size_mb"): 64,
            ("server", "port"): 8080,
            ("queue", "max_concurrent"): 2,
            ("cache", "ttl_seconds"): 3600,
        },
    )
    text = path.read_text()
    assert text.startswith("# my own notes on top\n[server]\nport = 8080  # the frontend expects")
    assert "# bigger: lots of repeated questions here\nmax_size_mb = 64" in text
    assert "[queue]\nmax_concurrent = 2" in text  # a new section for a changed value
    assert "ttl_seconds" not in text  # an untouched default is not added
    assert conf.cache.max_size_mb == 64 and conf.queue.max_concurrent == 2
    assert (tmp_path / "config.toml.bak").read_text() == USER_FILE
    assert cfg.load(path, env={}) == conf


def test_every_key_round_trips_through_the_shipped_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text((ROOT / "config.toml").read_text())
    values = {(k.section, k.name): k.default for k in cfg.registry()}
    values[("cors", "allowed_origins")] = ("http://a.test", "http://b.test:8000")
    values[("ollama", "keep_alive")] = "1h"
    values[("ollama", "timeout_seconds")] = 12.5
    values[("cache", "enabled")] = False
    values[("logging", "level")] = "debug"
    conf = save(path, values)
    assert conf.cors.allowed_origins == ("http://a.test", "http://b.test:8000")
    assert (conf.ollama.keep_alive, conf.ollama.timeout_seconds) == ("1h", 12.5)
    assert conf.cache.enabled is False and conf.logging.level == "debug"
    # Every comment of the shipped file is still there.
    for line in (ROOT / "config.toml").read_text().splitlines():
        if "#" in line:
            assert line.split("#", 1)[1] in path.read_text()


def test_nothing_invalid_is_written(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    with pytest.raises(cfg.ConfigError) as info:
        save(path, {("cache", "max_size_mb"): 0})
    assert info.value.problems == ["[cache].max_size_mb = 0: must be a whole number 1..65536"]
    assert path.read_text() == USER_FILE
    assert not (tmp_path / "config.toml.bak").exists()


def test_write_failure_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    # A read-only directory (root ignores chmod, so the rename itself is made to fail).
    monkeypatch.setattr("server.config_file.os.replace", read_only)
    with pytest.raises(ConfigWriteError) as info:
        save(path, {("cache", "max_size_mb"): 64})
    assert str(info.value) == (
        f"[Errno 30] could not write {path}: Read-only file system; the file was left as it was"
    )
    assert path.read_text() == USER_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "config.toml.bak"]


def test_broken_file_is_replaced_from_the_default_only_on_save(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[server\nport = 1")
    text = render(path, {("server", "port"): 9000})
    assert "port = 9000" in text and "[ollama]" in text
