"""The licence texts a PyInstaller bundle must carry, traced from the files it collected.

chatbot-companion.spec calls collect() after its Analysis. Every collected module, shared library
and data file is traced to what it came from: this project, a Python distribution, the Python
interpreter, Qt (inside the PySide6-Essentials and shiboken6 wheels, which carry no licence files:
the LGPL-3.0 and GPL-3.0 texts come from packaging/licenses/), or the build machine's operating
system, where dpkg names the Debian package and /usr/share/doc/<package>/copyright is its licence.
Without dpkg the index says so instead. licenses/README.txt lists each component, its licence
files and the shared libraries it provides.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
LICENSE_NAMES = ("LICENSE", "LICENCE", "COPYING", "NOTICE", "AUTHORS")
PROJECT = "chatbot-companion"
QT_DISTRIBUTIONS = ("pyside6-essentials", "shiboken6")
# Merged /usr: dpkg may know a library by either name.
USR_MERGED = ("/lib/", "/lib32/", "/lib64/", "/libx32/", "/bin/", "/sbin/")


@dataclass
class Component:
    title: str
    licence: str
    texts: dict[str, Path] = field(default_factory=dict)  # path under licenses/ -> source file
    libraries: set[str] = field(default_factory=set)  # shared libraries, as placed in the bundle
    notes: list[str] = field(default_factory=list)


def collect(pure, binaries, datas, *, root: Path, workdir: Path) -> list[tuple[str, str, str]]:
    """TOC entries (dest, source, "DATA") for the licence texts and licenses/README.txt."""
    components = trace(pure, binaries, datas, root=root)
    index = workdir / "licenses-README.txt"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(render(components), encoding="utf-8")
    entries = [("licenses/README.txt", str(index), "DATA")]
    for component in components:
        entries += [(f"licenses/{d}", str(s), "DATA") for d, s in component.texts.items()]
    return entries


def trace(pure, binaries, datas, *, root: Path) -> list[Component]:
    """The components the collected files come from, this project first, the system's last."""
    root = root.resolve()
    owners = _distribution_files()
    stdlib = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")}
    environment = Path(sys.prefix).resolve()  # a build venv may sit inside the checkout
    components: dict[str, Component] = {"self": _project(root)}
    system: dict[str, Path] = {}  # bundle path -> the library it was copied from
    unknown = Component("Files of unknown origin", "NOT IDENTIFIED: check these by hand")

    entries = [(e[0], e[1], False) for e in [*pure, *datas]]
    entries += [(e[0], e[1], True) for e in binaries if e[2] in ("BINARY", "EXTENSION")]
    for dest, src, is_library in entries:
        if not src or not os.path.isabs(src) or not os.path.exists(src):
            continue  # symlinks within the bundle, built-in and namespace modules
        path = Path(src).resolve()
        dist = owners.get(path)
        if (dist is not None and _name(dist) == PROJECT) or (
            dist is None and path.is_relative_to(root) and not path.is_relative_to(environment)
        ):
            key, make = "self", None
        elif dist is not None and _name(dist) in QT_DISTRIBUTIONS:
            key, make = ("icu", _icu) if path.name.startswith("libicu") else ("qt", _qt)
        elif dist is not None:
            key, make = _name(dist), _distribution
        elif _is_python(path, stdlib):
            key, make = "python", _python
        elif is_library:
            system[dest] = Path(src)
            continue
        else:
            unknown.notes.append(f"{dest} (from {src})")
            continue
        if key not in components:
            components[key] = make(dist if make is _distribution else path)
        if is_library:
            components[key].libraries.add(dest)
    _mark_bootloader(components)
    first = components.pop("self")
    ordered = [first, *sorted(components.values(), key=lambda c: c.title.lower())]
    return ordered + _system_components(system) + ([unknown] if unknown.notes else [])


# --- the components --------------------------------------------------------------------------


def _project(root: Path) -> Component:
    return Component(
        "Chatbot Companion (this program)",
        "MIT",
        {"chatbot-companion/LICENSE": root / "LICENSE"},
    )


def _qt(_library: Path) -> Component:
    versions = ", ".join(
        f"{metadata.distribution(name).metadata['Name']} {metadata.version(name)}"
        for name in QT_DISTRIBUTIONS
    )
    return Component(
        f"Qt 6 and Qt for Python ({versions}): the Qt libraries and plugins, PySide6, shiboken6",
        "LGPL-3.0-only (offered under LGPL-3.0-only OR GPL-2.0-only OR GPL-3.0-only; "
        "redistributed here under the LGPL, which adds permissions to the GPL-3.0)",
        {
            "qt/LGPL-3.0.txt": HERE / "licenses" / "LGPL-3.0.txt",
            "qt/GPL-3.0.txt": HERE / "licenses" / "GPL-3.0.txt",
        },
        notes=[
            "The wheels carry no licence files; these are the texts their metadata names.",
            "The Qt and PySide6 libraries are separate shared files in this folder: they can be "
            "replaced with compatible builds of your own.",
            "Source: https://download.qt.io/official_releases/QtForPython/ (PySide6, shiboken6) "
            "and https://download.qt.io/official_releases/qt/ (Qt).",
            "Qt's libraries contain third-party code under its own (permissive) licences, "
            "listed at https://doc.qt.io/qt-6/licenses-used-in-qt.html; the wheels do not carry "
            "those texts.",
        ],
    )


def _icu(library: Path) -> Component:
    major = re.search(r"\.so\.(\d+)", library.name)
    version = major.group(1) if major else ""
    component = Component(
        f"ICU {version} (International Components for Unicode), inside the PySide6 wheel",
        "Unicode-DFS-2016 (ICU's licence) and the third-party terms in ICU's LICENSE file",
    )
    # The wheel carries no licence text for ICU. The build machine's Debian ICU package has
    # ICU's terms (same licence across these releases, another version of the code): better
    # than none, and the note says what it is.
    debian = sorted(Path("/usr/share/doc").glob("libicu[0-9]*/copyright"))
    if debian:
        component.texts["icu/copyright"] = debian[-1]
        component.notes.append(
            f"icu/copyright is ICU's licence as Debian's {debian[-1].parent.name} package states "
            f"it (the build machine's ICU); the bundled ICU {version} is under the same terms, "
            f"given in full in ICU's LICENSE file of that release: "
            "https://github.com/unicode-org/icu"
        )
    else:
        component.notes.append(
            "NOT INCLUDED: the PySide6-Essentials wheel carries no licence text for ICU, and "
            "this build machine has no Debian ICU package to take it from. It is ICU's LICENSE "
            f"file of release {version}: https://github.com/unicode-org/icu"
        )
    return component


def _distribution(dist: metadata.Distribution) -> Component:
    texts = {}
    for f in dist.files or []:
        if f.name.upper().startswith(LICENSE_NAMES) and f.suffix not in (".py", ".pyc", ".pyi"):
            parts = f.parts
            # Keep the layout under .dist-info/licenses/ (aiohttp has LICENSE files for vendored
            # code there); otherwise the name alone.
            rel = "/".join(parts[parts.index("licenses") + 1 :]) if "licenses" in parts else f.name
            texts[f"{dist.metadata['Name']}/{rel}"] = Path(f.locate())
    meta = dist.metadata
    licence = meta.get("License-Expression") or (meta.get("License") or "").split("\n")[0]
    if not licence:
        classifiers = meta.get_all("Classifier") or []
        licence = "; ".join(c.split(" :: ")[-1] for c in classifiers if c.startswith("License"))
    component = Component(
        f"{meta['Name']} {dist.version} (Python package)", licence or "see its metadata", texts
    )
    if not texts:
        component.notes.append("NOT INCLUDED: the distribution carries no licence file.")
    return component


def _python(_path: Path) -> Component:
    text = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    component = Component(
        f"Python {sys.version.split()[0]} (the interpreter, its standard library and modules)",
        "PSF-2.0 (Python Software Foundation License)",
    )
    if text.is_file():
        component.texts["python/LICENSE.txt"] = text
    else:
        component.notes.append(f"NOT INCLUDED: no {text} on the build machine.")
    return component


def _mark_bootloader(components: dict[str, Component]) -> None:
    """The executable is PyInstaller's bootloader: PyInstaller's licence covers it."""
    try:
        dist = metadata.distribution("pyinstaller")
    except metadata.PackageNotFoundError:
        return
    component = components.setdefault(_name(dist), _distribution(dist))
    component.title = (
        f"PyInstaller {dist.version}: the bootloader (the chatbot-companion executable)"
    )
    component.licence = "GPL-2.0-or-later with the bootloader exception (see COPYING.txt)"


# --- libraries from the operating system -----------------------------------------------------


def _system_components(libraries: dict[str, Path]) -> list[Component]:
    """One component per Debian package the libraries came from, and one for the rest."""
    if not libraries:
        return []
    owners = debian_packages(list(libraries.values())) if shutil.which("dpkg-query") else {}
    details = _package_details(sorted(set(owners.values())))
    by_package: dict[str, Component] = {}
    rest = Component(
        "Libraries copied from the build machine's operating system",
        "NOT COLLECTED: "
        + (
            "dpkg does not know where these files came from"
            if shutil.which("dpkg-query")
            else "the build machine has no dpkg to say which package each came from"
        )
        + "; their licences are those of the packages that installed them",
    )
    for dest, src in sorted(libraries.items()):
        package = owners.get(src)
        if package is None:
            rest.libraries.add(dest)
            rest.notes.append(f"{dest} (from {src})")
            continue
        if package not in by_package:
            version, source = details.get(package, ("?", ""))
            component = Component(f"{package} {version} (Debian package)", "see its copyright file")
            copyright_file = Path("/usr/share/doc") / package / "copyright"
            if copyright_file.is_file():
                component.texts[f"debian/{package}/copyright"] = copyright_file
            else:
                component.notes.append(f"NOT INCLUDED: no {copyright_file} on the build machine.")
            if source:
                component.notes.append(f"Source: apt-get source {source}")
            by_package[package] = component
        by_package[package].libraries.add(dest)
    return [by_package[p] for p in sorted(by_package)] + ([rest] if rest.libraries else [])


def debian_packages(paths: list[Path]) -> dict[Path, str]:
    """The Debian package owning each file, where dpkg knows it under one of its names."""
    names: dict[str, list[Path]] = {}
    for path in paths:
        for name in _aliases(path):
            names.setdefault(name, []).append(path)
    result = subprocess.run(
        ["dpkg-query", "-S", *names], capture_output=True, text=True, check=False, timeout=60
    )
    owners: dict[Path, str] = {}
    for line in result.stdout.splitlines():
        packages, sep, name = line.partition(": ")
        if not sep or line.startswith("diversion "):
            continue
        for path in names.get(name.strip(), []):
            owners.setdefault(path, packages.split(",")[0].split(":")[0].strip())
    return owners


def _aliases(path: Path) -> list[str]:
    out = []
    for name in dict.fromkeys([str(path), os.path.realpath(path)]):
        out.append(name)
        if name.startswith("/usr/") and name[4:].startswith(USR_MERGED):
            out.append(name[4:])
        elif name.startswith(USR_MERGED):
            out.append("/usr" + name)
    return out


def _package_details(packages: list[str]) -> dict[str, tuple[str, str]]:
    """package -> (version, "source=version" for apt-get source)."""
    if not packages:
        return {}
    result = subprocess.run(
        [
            "dpkg-query",
            "-W",
            "-f",
            "${Package}\t${Version}\t${source:Package}\t${source:Version}\n",
            *packages,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    details = {}
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] not in details:
            details[parts[0]] = (parts[1], f"{parts[2]}={parts[3]}")
    return details


# --- helpers ---------------------------------------------------------------------------------


def _is_python(path: Path, stdlib: set[Path]) -> bool:
    """The interpreter's library, its standard library, or PyInstaller's archive of it."""
    if path.name.startswith("libpython") or path.name == "base_library.zip":
        return True
    return any(path.is_relative_to(d) for d in stdlib)


def _name(dist: metadata.Distribution) -> str:
    return re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()


def _distribution_files() -> dict[Path, metadata.Distribution]:
    owners = {}
    for dist in metadata.distributions():
        for f in dist.files or []:
            owners.setdefault(Path(f.locate()).resolve(), dist)
    return owners


def render(components: list[Component]) -> str:
    lines = [
        "Licences of what this bundle redistributes",
        "",
        "Each component below names its licence, the files in this folder (licenses/) that",
        "hold the licence text, and the shared libraries in the bundle (_internal/) it provides;",
        "Python modules are in the bundle's archive. Collected when the bundle was built.",
    ]
    for c in components:
        lines += ["", f"== {c.title}", f"licence: {c.licence}"]
        if c.texts:
            lines += ["licence text:", *(f"  {t}" for t in sorted(c.texts))]
        if c.libraries:
            lines += ["shared libraries:", *(f"  {lib}" for lib in sorted(c.libraries))]
        lines += [f"note: {n}" for n in c.notes]
    return "\n".join(lines) + "\n"
