"""Saving the config file: comments kept, validated first, atomic, with a backup."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from server import config as cfg
from server.config_file import BrokenConfigFile, ConfigWriteError, render, save
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


def test_a_file_that_is_not_toml_is_never_replaced_without_confirmation(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[server\nport = 1")  # a hand edit gone wrong
    with pytest.raises(BrokenConfigFile) as info:
        save(path, {("server", "port"): 9000})
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)
    assert path.read_text() == "[server\nport = 1"
    assert not (tmp_path / "config.toml.bak").exists()
    # Confirmed: the documented default with the value in it; the broken text kept as .bak.
    conf = save(path, {("server", "port"): 9000}, replace_broken=True)
    assert conf.server.port == 9000
    assert "port = 9000" in path.read_text() and "[ollama]" in path.read_text()
    assert (tmp_path / "config.toml.bak").read_text() == "[server\nport = 1"


def test_no_file_yet_starts_from_the_default(tmp_path):
    path = tmp_path / "new" / "config.toml"
    text = render(path, {("server", "port"): 9000})
    assert "port = 9000" in text and "[ollama]" in text


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o640])
def test_save_keeps_the_files_permissions(tmp_path, mode):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    path.chmod(mode)
    save(path, {("cache", "max_size_mb"): 64})
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert "max_size_mb = 64" in path.read_text()


def test_a_new_file_gets_the_umasks_permissions(tmp_path):
    path = tmp_path / "config.toml"
    old = os.umask(0o022)
    try:
        save(path, {("cache", "max_size_mb"): 64})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
