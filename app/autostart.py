"""Start at Login: a desktop entry on Linux, a Run key on Windows, a LaunchAgent on macOS."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from pathlib import Path

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
            args = "".join(f"<string>{a}</string>" for a in command)
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
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Chatbot Companion\n"
        "Comment=Local LLM gateway for Ollama: cache, queue and live stats\n"
        f"Exec={shlex.join(command)}\n"
        f"Icon={APP_ID}\n"
        "Terminal=false\n"
        "Categories=Development;Utility;\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def _win_command(command: list[str]) -> str:
    return " ".join(f'"{part}"' for part in command)


_RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
_PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>Label</key><string>com.chatbot-companion</string>
<key>ProgramArguments</key><array>{args}</array>
<key>RunAtLoad</key><true/>
</dict></plist>
"""
