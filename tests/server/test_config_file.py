"""Saving the config file: comments kept, validated first, atomic, with a backup."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from server import config as cfg
from server.config import HostSpec
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


# -- [[ollama.hosts]]: edited table by table ---------------------------------------------------

GPU1, GPU2, GPU3 = "http://gpu1:11434", "http://gpu2:11434", "http://gpu3:11434"
HOSTS_FILE = f"""\
[ollama]
model = "llama3.2"

# The boxes under the desk (before the list).
[[ollama.hosts]]  # the old one
# 24 GB of VRAM
url = "{GPU1}"
max_concurrent = 2  # more and it swaps
weight = 1.0
# keep this one in mind

# The new box.
[[ollama.hosts]]
url = "{GPU2}"  # on the 10G switch
models = [
    "qwen2.5:7b",  # the only one that fits
]

# Caching (after the list).
[cache]
max_size_mb = 512
"""
# The first table and the comment above the list; the second table with its heading; what
# follows the list.
BEFORE = '[ollama]\nmodel = "llama3.2"\n\n# The boxes under the desk (before the list).\n'
FIRST = HOSTS_FILE[
    HOSTS_FILE.index("[[ollama.hosts]]  # the old one") : HOSTS_FILE.index("\n# The new")
]
SECOND = HOSTS_FILE[HOSTS_FILE.index("# The new box.") : HOSTS_FILE.index("\n# Caching")]
AFTER = "\n# Caching (after the list).\n[cache]\nmax_size_mb = 512\n"
GPU1_TABLE = {"url": GPU1, "max_concurrent": 2}
GPU2_TABLE = {"url": GPU2, "models": ["qwen2.5:7b"]}


def save_hosts(tmp_path, hosts: list[dict]) -> tuple[str, cfg.Config]:
    path = tmp_path / "config.toml"
    path.write_text(HOSTS_FILE)
    conf = save(path, {("ollama", "hosts"): hosts})
    assert cfg.load(path, env={}) == conf
    return path.read_text(), conf


def test_changing_one_hosts_field_keeps_every_comment(tmp_path):
    text, conf = save_hosts(tmp_path, [{**GPU1_TABLE, "max_concurrent": 3}, GPU2_TABLE])
    assert text == HOSTS_FILE.replace("max_concurrent = 2  #", "max_concurrent = 3  #")
    assert conf.ollama.hosts == (HostSpec(GPU1, 3), HostSpec(GPU2, models=("qwen2.5:7b",)))


def test_a_field_cleared_goes_and_one_set_is_added_to_that_table(tmp_path):
    text, conf = save_hosts(tmp_path, [{"url": GPU1, "weight": 2.5}, GPU2_TABLE])
    first = FIRST.replace("max_concurrent = 2  # more and it swaps\n", "").replace(
        "weight = 1.0", "weight = 2.5"
    )
    assert text == BEFORE + first + "\n" + SECOND + AFTER
    assert conf.ollama.hosts[0] == HostSpec(GPU1, None, 2.5)


def test_a_new_field_goes_in_the_usual_order(tmp_path):
    text, conf = save_hosts(tmp_path, [GPU1_TABLE, {**GPU2_TABLE, "weight": 3.0}])
    assert text == HOSTS_FILE.replace("models = [", "weight = 3.0\nmodels = [")
    assert conf.ollama.hosts[1] == HostSpec(GPU2, None, 3.0, ("qwen2.5:7b",))


def test_adding_a_host_appends_a_table_and_keeps_the_others(tmp_path):
    text, conf = save_hosts(
        tmp_path, [GPU1_TABLE, GPU2_TABLE, {"url": GPU3, "max_concurrent": 1, "weight": 0.5}]
    )
    third = f'[[ollama.hosts]]\nurl = "{GPU3}"\nmax_concurrent = 1\nweight = 0.5\n'
    assert text == BEFORE + FIRST + "\n" + SECOND + "\n" + third + AFTER
    assert [h.url for h in conf.ollama.hosts] == [GPU1, GPU2, GPU3]


def test_removing_the_first_host_keeps_the_second_with_its_heading(tmp_path):
    text, conf = save_hosts(tmp_path, [GPU2_TABLE])
    assert text == BEFORE + "\n" + SECOND + AFTER
    assert conf.ollama.hosts == (HostSpec(GPU2, models=("qwen2.5:7b",)),)


def test_removing_the_last_host_keeps_what_follows_the_list(tmp_path):
    text, conf = save_hosts(tmp_path, [GPU1_TABLE])
    assert text == BEFORE + FIRST + AFTER
    assert conf.ollama.hosts == (HostSpec(GPU1, 2),)


def test_reordered_hosts_move_with_their_comments(tmp_path):
    text, conf = save_hosts(tmp_path, [GPU2_TABLE, GPU1_TABLE])
    assert text == BEFORE + "\n" + SECOND + "\n" + FIRST + AFTER
    assert [h.url for h in conf.ollama.hosts] == [GPU2, GPU1]


def test_an_edited_url_is_the_same_table(tmp_path):
    text, _ = save_hosts(tmp_path, [GPU1_TABLE, {**GPU2_TABLE, "url": GPU3}])
    assert text == HOSTS_FILE.replace(f'url = "{GPU2}"  #', f'url = "{GPU3}"  #')


def test_removing_every_host_leaves_an_empty_list_between_the_comments(tmp_path):
    text, conf = save_hosts(tmp_path, [])
    assert text == BEFORE + "hosts = []\n" + AFTER
    assert conf.ollama.hosts == ()


def test_the_same_hosts_spelled_otherwise_leave_the_file_alone(tmp_path):
    # A trailing slash, a default left out, HostSpecs as the running config holds them.
    text, _ = save_hosts(tmp_path, [{**GPU1_TABLE, "url": GPU1 + "/"}, GPU2_TABLE])
    assert text == HOSTS_FILE
    text, _ = save_hosts(tmp_path, [HostSpec(GPU1, 2), HostSpec(GPU2, models=("qwen2.5:7b",))])
    assert text == HOSTS_FILE


def test_hosts_in_the_shipped_file_become_tables_and_back(tmp_path):
    path = tmp_path / "config.toml"
    shipped = (ROOT / "config.toml").read_text()
    path.write_text(shipped)
    save(path, {("ollama", "hosts"): [GPU1_TABLE, {"url": GPU2}]})
    text = path.read_text()
    assert (
        f'# models = ["llama3.2", "nomic-embed-text"]\n\n[[ollama.hosts]]\nurl = "{GPU1}"' in text
    )
    assert f'[[ollama.hosts]]\nurl = "{GPU2}"\n\n[cache]\n' in text
    # A comment written into the tables since survives the next edit.
    path.write_text(text.replace(f'url = "{GPU2}"\n', f'url = "{GPU2}"  # borrowed\n'))
    conf = save(path, {("ollama", "hosts"): [GPU1_TABLE, {"url": GPU2, "max_concurrent": 4}]})
    assert f'url = "{GPU2}"  # borrowed\nmax_concurrent = 4\n\n[cache]\n' in path.read_text()
    assert conf.ollama.hosts[1] == HostSpec(GPU2, 4)
    save(path, {("ollama", "hosts"): []})
    text = path.read_text()
    assert "\n[[ollama.hosts]]" not in text and "\nhosts = []\n" in text
    assert cfg.load(path, env={}).ollama.hosts == ()
    for line in shipped.splitlines():
        if line.startswith("# "):
            assert line in text  # the example and every help comment stay
