"""Writing the config file: validated first, comments and key order kept, atomically, with a .bak.

The file is edited with tomlkit, so a user's comments, blank lines and key order survive; only
values that differ from what the file says are touched (a key the file lacks is added to its
section only when it differs from the default). The new text is validated with the same loader
the server starts with before anything is written: nothing invalid reaches the disk. The write
goes to a temporary file in the same directory, is flushed to disk, and replaces the old file
with one rename; the previous version is kept as `<name>.bak`, and the file keeps its
permissions (a 0644 file stays 0644). A file that is not TOML at all (a hand edit gone wrong) is
never replaced unless the caller says so: `BrokenConfigFile` asks it to confirm first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError

from server.config import Config, ConfigError, default_toml, load, registry


class ConfigWriteError(OSError):
    """The file could not be written; the old one is untouched."""


class BrokenConfigFile(ValueError):
    """The file exists but cannot be parsed: saving would replace the user's text."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is not valid TOML ({reason})")


def render(path: Path, values: dict[tuple[str, str], Any], *, replace_broken: bool = False) -> str:
    """The file's new text with `values` set in it (comments and order kept).

    No file yet: the documented default with `values` in it. A file that cannot be parsed
    raises BrokenConfigFile, unless `replace_broken` (the user confirmed): then the same.
    """
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        doc = tomlkit.parse(default_toml())
    except (OSError, UnicodeDecodeError, ParseError) as exc:
        if not replace_broken:
            raise BrokenConfigFile(Path(path), str(exc)) from None
        doc = tomlkit.parse(default_toml())
    defaults = {(k.section, k.name): k.default for k in registry()}
    for (section, name), value in values.items():
        plain = list(value) if isinstance(value, tuple) else value
        table = doc.get(section)
        if table is None:
            if plain == defaults[(section, name)]:
                continue
            doc[section] = table = tomlkit.table()
        item: Any = table.get(name)
        current = item.unwrap() if hasattr(item, "unwrap") else item
        if current is None and plain == defaults[(section, name)]:
            continue
        if current != plain:
            table[name] = plain
    return tomlkit.dumps(doc)


def save(path: Path, values: dict[tuple[str, str], Any], *, replace_broken: bool = False) -> Config:
    """Validate and write; return the configuration the file now holds (before environment
    overrides). Raises ConfigError or BrokenConfigFile (nothing written) or ConfigWriteError
    (old file intact)."""
    text = render(path, values, replace_broken=replace_broken)
    check = Path(tempfile.mkstemp(suffix=".toml")[1])
    try:
        check.write_text(text, encoding="utf-8")
        config = load(check, env={})  # raises ConfigError: the new text would not start
    finally:
        check.unlink(missing_ok=True)
    write_atomic(path, text)
    return config


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            # mkstemp makes 0600: give the new file the old one's mode (and owner, where we
            # may), or what a plain create would give under the umask.
            _copy_ownership(path, tmp.fileno())
            os.fsync(tmp.fileno())
        if path.exists():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        os.replace(tmp_name, path)
    except OSError as exc:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        raise ConfigWriteError(
            exc.errno, f"could not write {path}: {exc.strerror or exc}; the file was left as it was"
        ) from exc


def _copy_ownership(path: Path, fd: int) -> None:
    try:
        old = os.stat(path)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        return
    os.fchmod(fd, stat.S_IMODE(old.st_mode))
    if hasattr(os, "fchown"):
        with contextlib.suppress(OSError):  # only root may give a file away
            os.fchown(fd, old.st_uid, old.st_gid)


__all__ = [
    "BrokenConfigFile",
    "ConfigError",
    "ConfigWriteError",
    "render",
    "save",
    "write_atomic",
]
