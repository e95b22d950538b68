"""Start at Login: a desktop entry on Linux, a Run key on Windows, a LaunchAgent on macOS."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from app import resources

APP_ID = "chatbot-companion"


def launch_command() -> list[str]:
    exe = shutil.which(APP_ID)
    if getattr(sys, "frozen", False):  # a PyInstaller bundle
        return [sys.executable]
    return [exe] if exe else [sys.executable, "-m", "app"]


def _linux_entry() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "autostart" / f"{APP_ID}.desktop"


def _mac_plist() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / "com.chatbot-companion.plist"


def is_enabled() -> bool:
    if sys.platform == "win32":
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, _RUN_KEY) as key:
                winreg.QueryValueEx(key, APP_ID)
            return True
        except OSError:
            return False
    if sys.platform == "darwin":
        return _mac_plist().exists()
    entry = _linux_entry()
    return entry.exists() and "Hidden=true" not in entry.read_text(encoding="utf-8")


def set_enabled(enabled: bool) -> None:
    command = launch_command()
    if sys.platform == "win32":
        import winreg

        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, _RUN_KEY) as key:
            if enabled:
                winreg.SetValueEx(key, APP_ID, 0, winreg.REG_SZ, _win_command(command))
            else:
                with contextlib.suppress(OSError):
                    winreg.DeleteValue(key, APP_ID)
        return
    if sys.platform == "darwin":
        plist = _mac_plist()
        if enabled:
            args = "".join(f"<string>{escape(a)}</string>" for a in command)
            plist.parent.mkdir(parents=True, exist_ok=True)
            plist.write_text(_PLIST.format(args=args), encoding="utf-8")
        else:
            plist.unlink(missing_ok=True)
        return
    entry = _linux_entry()
    if enabled:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(desktop_entry(command), encoding="utf-8")
    else:
        entry.unlink(missing_ok=True)


def desktop_entry(command: list[str]) -> str:
    """The desktop entry launching `command`: the shipped template (shared with
    scripts/install_desktop.sh, so the menu entry and this one are one) with its Exec filled in,
    and its Icon a path to the shipped PNG where the icon theme lacks the app's icon."""
    template = _MINIMAL_TEMPLATE
    path = resources.find(resources.DESKTOP_TEMPLATE)
    if path is not None:
        with contextlib.suppress(OSError):
            template = path.read_text(encoding="utf-8")
    # Exec first: its value has no line break, so it cannot fake an Icon line.
    entry = template.replace("@EXEC@", exec_field(command))
    return entry.replace(f"\nIcon={APP_ID}\n", f"\nIcon={icon_field()}\n")


def icon_field() -> str:
    """The Icon value: the themed name where an icon theme has it (scripts/install_desktop.sh
    puts it there), else the absolute path of a shipped PNG, which the spec allows, so that the
    entry never names an icon installed nowhere (a bundle not installed, a pip install)."""
    if _theme_has_icon():
        return APP_ID
    pngs = resources.hicolor_icons()
    if not pngs:
        return APP_ID
    png = pngs.get(256) or pngs[max(pngs)]
    return _string_value(str(png))


def _theme_has_icon() -> bool:
    home = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    dirs = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    for base in [home, *dirs.split(":")]:
        if not base:
            continue
        data = Path(base)
        if any((data / "icons" / "hicolor").glob(f"*/apps/{APP_ID}.*")):
            return True
        if any((data / "pixmaps").glob(f"{APP_ID}.*")):
            return True
    return False


# Characters the desktop entry spec reserves in Exec: an argument holding one must be quoted.
_EXEC_RESERVED = frozenset(" \t\n\"'\\><~|&;$*?#()`")


def exec_field(command: list[str]) -> str:
    """`command` as a desktop entry Exec value (not shell quoting: single quotes do not quote)."""
    return " ".join(_exec_arg(arg) for arg in command)


def _exec_arg(arg: str) -> str:
    if not arg or any(c in _EXEC_RESERVED for c in arg):
        arg = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    # Then % starts a field code, and the rules for every string value.
    return _string_value(arg.replace("%", "%%"))


def _string_value(value: str) -> str:
    """`value` escaped as the desktop entry spec wants a string: \\ starts an escape."""
    value = value.replace("\\", "\\\\")
    return value.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _win_command(command: list[str]) -> str:
    return " ".join(f'"{part}"' for part in command)


# Only when the template is missing: enough for Start at Login to work.
_MINIMAL_TEMPLATE = (
    "[Desktop Entry]\n"
    "Type=Application\n"
    "Name=Chatbot Companion\n"
    "Exec=@EXEC@\n"
    f"Icon={APP_ID}\n"
    "Terminal=false\n"
    "X-GNOME-Autostart-enabled=true\n"
)

_RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
_PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>Label</key><string>com.chatbot-companion</string>
<key>ProgramArguments</key><array>{args}</array>
<key>RunAtLoad</key><true/>
</dict></plist>
"""
