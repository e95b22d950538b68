"""Start at Login: a desktop entry on Linux, a Run key on Windows, a LaunchAgent on macOS."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

APP_ID = "chatbot-companion"
# The desktop entry template, shared with scripts/install_desktop.sh (the menu entry) so both
# are one entry. Under resources/, which the PyInstaller bundle carries whole.
TEMPLATE = Path("resources") / f"{APP_ID}.desktop.in"


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
    """The desktop entry launching `command`: the packaged template with its Exec filled in."""
    template = _MINIMAL_TEMPLATE
    for root in resource_roots():
        with contextlib.suppress(OSError):
            template = (root / TEMPLATE).read_text(encoding="utf-8")
            break
    return template.replace("@EXEC@", exec_field(command))


def resource_roots() -> list[Path]:
    """Where shipped files live: a PyInstaller bundle's data directory, then the source tree."""
    roots = []
    if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS"):
        roots.append(Path(sys._MEIPASS))
    roots.append(Path(__file__).resolve().parents[1])
    return roots


# Characters the desktop entry spec reserves in Exec: an argument holding one must be quoted.
_EXEC_RESERVED = frozenset(" \t\n\"'\\><~|&;$*?#()`")


def exec_field(command: list[str]) -> str:
    """`command` as a desktop entry Exec value (not shell quoting: single quotes do not quote)."""
    return " ".join(_exec_arg(arg) for arg in command)


def _exec_arg(arg: str) -> str:
    if not arg or any(c in _EXEC_RESERVED for c in arg):
        arg = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    # Then the rules for every string value: % starts a field code, \ starts an escape.
    arg = arg.replace("%", "%%").replace("\\", "\\\\")
    return arg.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _win_command(command: list[str]) -> str:
    return " ".join(f'"{part}"' for part in command)


# Only when the template is not shipped (a wheel carries just the Python packages): enough for
# Start at Login to work.
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
