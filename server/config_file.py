"""Writing the config file: validated first, comments and key order kept, atomically, with a .bak.

The file is edited with tomlkit, so a user's comments, blank lines and key order survive; only
values that differ from what the file says are touched (a key the file lacks is added to its
section only when it differs from the default). The `[[ollama.hosts]]` tables are edited one by
one: a host kept keeps its table, comments included, with only its changed fields set; a host
removed takes its table and the comment above it away, a host added gets a new table; what
stands before and after the list stays where it is. The new text is validated with the same loader
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
from tomlkit import TOMLDocument
from tomlkit.container import Container
from tomlkit.exceptions import ParseError
from tomlkit.items import AoT, Comment, Item, Null, SingleKey, Table, Trivia, Whitespace
from tomlkit.items import Key as TomlKey

from server.config import (
    HOST_FIELDS,
    HOSTS_KEY,
    Config,
    ConfigError,
    HostSpec,
    default_toml,
    load,
    parse_hosts,
    registry,
)


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
        if (section, name) == HOSTS_KEY:
            _set_hosts(doc, value)
            continue
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


# -- [[ollama.hosts]] ------------------------------------------------------------------------
#
# The host list is edited table by table, not rewritten: each host the file has keeps its own
# table (comments, key order, inline comments) and only the fields that changed are set. A host
# is recognised by its url; a row whose url was edited is the table at the same place.
#
# tomlkit files the lines between two tables under the first one. Here, what stands after a
# table's last key up to its last blank line is the table's own; from that blank line on (or all
# of it, without one) it is the heading of whatever follows: the next host's (which moves and
# goes with that host) or, after the last host, the next section's (which stays at the end).

Body = list[tuple[TomlKey | None, Item]]
# A field the file may spell out with the value that leaving it out means.
_HOST_DEFAULTS = {"weight": 1.0}


def _set_hosts(doc: TOMLDocument, value: Any) -> None:
    new = [_host_entry(entry) for entry in value]
    section: Any = doc.get("ollama")
    if section is None:
        if not new:
            return
        doc["ollama"] = section = tomlkit.table()
    old = section.get("hosts")
    current = old.unwrap() if hasattr(old, "unwrap") else old
    if _same_hosts(current, new):
        return
    if isinstance(section, Table) and isinstance(old, AoT) and _editable(section, old):
        _merge_hosts(section, old, new)
    elif new:
        section["hosts"] = _fresh_tables(new)  # tomlkit puts them after the section's keys
    else:
        section["hosts"] = []


def _host_entry(entry: Any) -> dict[str, Any]:
    if isinstance(entry, HostSpec):
        return entry.to_dict()
    if isinstance(entry, str):
        return {"url": entry}
    return dict(entry.unwrap() if hasattr(entry, "unwrap") else entry)


def _same_hosts(current: Any, new: list[dict[str, Any]]) -> bool:
    """The same hosts, however the file spells them (a trailing slash, `weight = 1`)."""
    if current is None:
        return not new
    had, problems = parse_hosts(current)
    return not problems and had == parse_hosts(new)[0] and len(had) == len(new)


def _same_field(name: str, a: Any, b: Any) -> bool:
    if name == "url":
        return str(a).rstrip("/") == str(b).rstrip("/")
    if name == "models" and isinstance(a, list) and isinstance(b, list):
        return [str(m).strip() for m in a] == [str(m).strip() for m in b]
    return bool(a == b)


def _editable(section: Table, aot: AoT) -> bool:
    """Tables of plain keys, the last thing in their section (as the file's text has them)."""
    body = [entry for entry in section.value.body if not isinstance(entry[1], Null)]
    if not body or body[-1][0] is None or body[-1][0].key != "hosts":
        return False
    return all(
        any(key is not None for key, _ in table.value.body)
        and all(not isinstance(item, Table | AoT) for _, item in table.value.body)
        for table in aot
    )


def _merge_hosts(section: Table, aot: AoT, new: list[dict[str, Any]]) -> None:
    old = list(aot)
    cores, owns, leads = zip(*(_split(table) for table in old), strict=True)
    # headings[i]: the lines above old table i (the first one's stay where they are).
    headings: list[Body] = [[], *leads[:-1]]
    after = leads[-1]
    origins = _origins(old, new)
    blank: Body = [(None, Whitespace("\n"))]

    def heading(j: int) -> Body:
        o = origins[j]
        return headings[o] if o is not None and o > 0 else blank

    tables = []
    for j, (entry, o) in enumerate(zip(new, origins, strict=True)):
        body = _updated(cores[o], entry) if o is not None else _updated([], entry)
        if o is not None:
            body += owns[o]
        body += heading(j + 1) if j + 1 < len(new) else after
        tables.append(_table(body, old[o] if o is not None else None))
    section.remove("hosts")
    if new:
        first = heading(0)
        if first is not blank and any(isinstance(item, Comment) for _, item in first):
            # The first host's heading goes above the list, where the old first one's stood.
            for key, item in first:
                section.append(key, item)
        indent = tables[0].trivia.indent
        section.append("hosts", AoT(tables, name="hosts", parsed=True))
        tables[0].trivia.indent = indent  # tomlkit would add a blank line after a comment
    else:
        section.append("hosts", tomlkit.array())
        for key, item in after:
            section.append(key, item)


def _split(table: Table) -> tuple[Body, Body, Body]:
    """The table's keys (and the comments among them), its own lines after them, and the
    heading of what follows it."""
    body = [entry for entry in table.value.body if not isinstance(entry[1], Null)]
    last = max(i for i, (key, _) in enumerate(body) if key is not None)
    core, tail = body[: last + 1], body[last + 1 :]
    blanks = [i for i, (_, item) in enumerate(tail) if isinstance(item, Whitespace)]
    cut = blanks[-1] if blanks else 0
    return core, tail[:cut], tail[cut:]


def _origins(old: list[Table], new: list[dict[str, Any]]) -> list[int | None]:
    """For each new entry, the old table it continues: the one with its url, else (an edited
    url) the one at its place if no other entry took it; None for a new host."""
    by_url: dict[str, int] = {}
    for i, table in enumerate(old):
        by_url.setdefault(str(table.get("url")).rstrip("/"), i)
    origins: list[int | None] = []
    for entry in new:
        o = by_url.get(str(entry.get("url")).rstrip("/"))
        origins.append(o if o not in origins else None)
    for j, o in enumerate(origins):
        if o is None and j < len(old) and j not in origins:
            origins[j] = j
    return origins


def _updated(core: Body, entry: dict[str, Any]) -> Body:
    """`core` with `entry`'s values: unchanged keys untouched, changed ones keeping their
    comment, new ones after the last, and those the entry leaves out removed."""
    out: Body = []
    for key, item in core:
        if key is None:
            out.append((key, item))
            continue
        name, was = key.key, item.unwrap()
        if name not in entry:
            if name in _HOST_DEFAULTS and _same_field(name, was, _HOST_DEFAULTS[name]):
                out.append((key, item))  # left out means the same
            continue
        if _same_field(name, was, entry[name]):
            out.append((key, item))
        else:
            changed = tomlkit.item(entry[name])
            changed.trivia.indent = item.trivia.indent
            changed.trivia.comment_ws = item.trivia.comment_ws
            changed.trivia.comment = item.trivia.comment
            out.append((key, changed))
    present = {key.key for key, _ in out if key is not None}
    for name, value in entry.items():
        if name not in present:
            out.insert(_place(out, name), (SingleKey(name), tomlkit.item(value)))
    return out


def _place(body: Body, name: str) -> int:
    """Where a new field goes: in the order of HOST_FIELDS, above the comment lines of the
    field it comes before (they speak of that one)."""
    order = list(HOST_FIELDS)
    rank = order.index(name) if name in order else len(order)
    later = [
        i
        for i, (key, _) in enumerate(body)
        if key is not None and (order.index(key.key) if key.key in order else len(order)) > rank
    ]
    if not later:
        return len(body)
    at = later[0]
    while at > 0 and body[at - 1][0] is None and isinstance(body[at - 1][1], Comment):
        at -= 1
    return at


def _table(body: Body, like: Table | None) -> Table:
    container = Container(True)
    for key, item in body:
        container.append(key, item)
    trivia = like.trivia.copy() if like is not None else Trivia()
    return Table(container, trivia, True, name="hosts")


def _fresh_tables(new: list[dict[str, Any]]) -> AoT:
    aot = tomlkit.aot()
    for entry in new:
        table = tomlkit.table()
        table.update(entry)
        aot.append(table)
    aot[-1].add(tomlkit.nl())  # a blank line before the next section
    return aot


__all__ = [
    "BrokenConfigFile",
    "ConfigError",
    "ConfigWriteError",
    "render",
    "save",
    "write_atomic",
]
