"""The `chatbot-backend` command: run the headless gateway, print its config, or simulate Ollama."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from server import __version__
from server.config import Config, ConfigError, effective_env, load
from server.gateway import Gateway
from server.lifecycle import PortInUse, ServerHost
from server.logs import setup_logging

log = logging.getLogger("chatbot.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatbot-backend",
        description="Local LLM gateway in front of Ollama (headless). "
        "`chatbot-backend simulate-ollama --help` runs the Ollama simulator instead.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $CHATBOT_CONFIG, else ./config.toml if present, else built-in "
        "defaults)",
    )
    parser.add_argument("--host", help="override [server].host")
    parser.add_argument("--port", type=int, help="override [server].port")
    parser.add_argument("--print-config", action="store_true", help="print the effective config")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_path(arg: str | None, env: dict[str, str]) -> str | None:
    if arg:
        return arg
    if env.get("CHATBOT_CONFIG"):
        return env["CHATBOT_CONFIG"]
    return "config.toml" if Path("config.toml").is_file() else None


def cli_overrides(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    """--host and --port, as config overrides (both commands take them)."""
    overrides: dict[tuple[str, str], Any] = {}
    if args.host is not None:
        overrides[("server", "host")] = args.host
    if args.port is not None:
        overrides[("server", "port")] = args.port
    return overrides


def load_config(args: argparse.Namespace) -> Config:
    env = effective_env()
    return load(config_path(args.config, env), env=env, overrides=cli_overrides(args))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate-ollama":
        return _simulate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(config.to_toml())
        return 0
    setup_logging(config.logging.level)
    try:
        asyncio.run(serve(config))
    except PortInUse as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    host = ServerHost(Gateway(config))
    try:
        await host.start()
        log.info("chatbot-backend %s ready (pid %d)", __version__, os.getpid())
        await stop.wait()
        log.info("shutting down")
    finally:
        await host.stop()


def _simulate(argv: list[str]) -> int:
    from server import simulator

    parser = argparse.ArgumentParser(
        prog="chatbot-backend simulate-ollama",
        description="An Ollama-compatible server with deterministic answers, for tests and demos.",
    )
    simulator.add_cli_arguments(parser)
    return simulator.run(parser.parse_args(argv))
