"""The `chatbot-companion` command: the tray app, or `--headless` for the plain server."""

from __future__ import annotations

import argparse
import os
import sys

from server import __version__


def display_problem() -> str | None:
    """Qt aborts the whole process without a display; say so first, and what to do instead."""
    if sys.platform in ("win32", "darwin") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return (
        "chatbot-companion: no display found (DISPLAY and WAYLAND_DISPLAY are unset). "
        "Run `chatbot-companion --headless` (or `chatbot-backend`) to serve without a window."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatbot-companion",
        description="Chatbot Companion: the local LLM gateway with a tray icon and dashboard.",
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="run the server without a GUI (same as chatbot-backend)",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: the user's copy in the config directory)",
    )
    parser.add_argument("--host", help="override [server].host")
    parser.add_argument("--port", type=int, help="override [server].port")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--headless" in argv:
        from server.cli import main as headless

        argv.remove("--headless")
        return headless(argv)
    args = build_parser().parse_args(argv)
    problem = display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        from app.companion import run
    except ImportError as exc:
        print(
            f"chatbot-companion: the desktop app needs PySide6 and qasync ({exc}). Install "
            "them with `pip install 'chatbot-companion[gui]'`, or run with --headless.",
            file=sys.stderr,
        )
        return 2
    return run(args)
