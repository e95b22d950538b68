"""Where the shipped files are: a PyInstaller bundle's, an installed package's, a checkout's."""

from __future__ import annotations

import sys
from pathlib import Path

from server.config import default_toml

APP_ID = "chatbot-companion"
RESOURCES = Path("resources")
CONFIG = Path("config.toml")
DESKTOP_TEMPLATE = RESOURCES / f"{APP_ID}.desktop.in"

_HERE = Path(__file__).resolve().parent
# A wheel carries resources/ and config.toml here (packaging/build_hooks.py copies them in).
PACKAGE_DATA = _HERE / "shipped"
SOURCE_TREE = _HERE.parent


def roots() -> list[Path]:
    """The directories holding resources/ and config.toml, in the order they are searched."""
    found = []
    bundle = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and bundle:
        found.append(Path(bundle))
    if PACKAGE_DATA.is_dir():
        found.append(PACKAGE_DATA)
    # Only a checkout: beside an installed package lies site-packages, which is not ours.
    if (SOURCE_TREE / "pyproject.toml").is_file():
        found.append(SOURCE_TREE)
    return found


def find(relative: Path | str) -> Path | None:
    """The shipped file or directory at `relative` (e.g. resources/tray/serving.png) in the
    first root that has it; None where none does."""
    for root in roots():
        path = root / relative
        if path.exists():
            return path
    return None


def hicolor_icons() -> dict[int, Path]:
    """The application icon's PNGs by side, from icons/hicolor/<N>x<N>/apps/ (the freedesktop
    layout scripts/install_desktop.sh copies as is); {} where none is shipped."""
    hicolor = find(RESOURCES / "icons" / "hicolor")
    icons = {}
    for png in sorted(hicolor.glob(f"*/apps/{APP_ID}.png")) if hicolor else []:
        side = png.parent.parent.name.partition("x")[0]
        if side.isdigit():
            icons[int(side)] = png
    return icons


def default_config_path() -> Path | None:
    """The shipped default config.toml."""
    return find(CONFIG)


def default_config_text() -> str:
    """The text of a user's first config file: the shipped default, or where none is shipped
    the registry's text, which it equals (tests check both)."""
    path = default_config_path()
    return path.read_text(encoding="utf-8") if path else default_toml()
