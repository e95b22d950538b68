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

from server import __version__, config_file
from server.auth import ROLES, Exposed, new_key, parse_key_entry
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
    if argv and argv[0] == "keys":
        return _keys(argv[1:])
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
    setup_logging(config.logging.level, batch_writes=True)
    try:
        asyncio.run(serve(config))
    except PortInUse as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except Exposed as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 2
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


def _keys(argv: list[str]) -> int:
    """`chatbot-backend keys create|list|revoke`: API keys, stored hashed in the config file."""
    parser = argparse.ArgumentParser(
        prog="chatbot-backend keys",
        description="Manage API keys. A new key is shown once; the config keeps only its hash.",
    )
    parser.add_argument("--config", metavar="PATH", help="config file (as for the server)")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("name", help="who the key is for (shown in stats, never the key)")
    create.add_argument("--role", choices=ROLES, default="user")
    sub.add_parser("list", help="list key names and roles")
    revoke = sub.add_parser("revoke", help="remove a key by name")
    revoke.add_argument("name")
    args = parser.parse_args(argv)
    env = effective_env()
    path = Path(config_path(args.config, env) or "config.toml")
    try:
        entries = list(load(path, env={}).auth.keys) if path.exists() else []
    except ConfigError as exc:
        print(f"config error: {exc.problems[0]}", file=sys.stderr)
        return 2
    names = [parse_key_entry(e).name for e in entries]
    if args.action == "list":
        for entry in entries:
            parsed = parse_key_entry(entry)
            print(f"{parsed.name}\t{parsed.role}")
        return 0
    if args.action == "revoke":
        if args.name not in names:
            print(f"error: no key named {args.name!r} in {path}", file=sys.stderr)
            return 1
        entries = [e for e in entries if parse_key_entry(e).name != args.name]
    else:
        if args.name in names:
            print(f"error: a key named {args.name!r} exists; revoke it first", file=sys.stderr)
            return 1
        try:
            key, entry = new_key(args.name, args.role)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        entries.append(entry)
    try:
        config_file.save(path, {("auth", "keys"): entries})
    except (ConfigError, OSError, config_file.BrokenConfigFile) as exc:
        print(f"error: could not save {path}: {exc}", file=sys.stderr)
        return 1
    if args.action == "create":
        print(key)
        print(
            f"Key {args.name!r} ({args.role}) saved in {path} as a hash: this is the only time "
            "it is shown. A running gateway picks it up on restart.",
            file=sys.stderr,
        )
    else:
        print(f"Key {args.name!r} removed from {path}.", file=sys.stderr)
    return 0


def _simulate(argv: list[str]) -> int:
    from server import simulator

    parser = argparse.ArgumentParser(
        prog="chatbot-backend simulate-ollama",
        description="An Ollama-compatible server with deterministic answers, for tests and demos.",
    )
    simulator.add_cli_arguments(parser)
    return simulator.run(parser.parse_args(argv))
