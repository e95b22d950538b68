"""Ollama-compatible HTTP simulator: Ollama's native API with deterministic answers, for tests.

Chat and generate (with thinking, tool calls and structured output), embeddings, and a model
store (tags, ps, show, pull, push, create, copy, delete, blobs), in Ollama's wire format.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from server.simulator.handlers import create_app
from server.simulator.settings import (
    FAULT_MODES,
    SIM_STATS,
    SimulatorSettings,
    SimulatorStats,
    check_fault,
)

__all__ = [
    "SIM_STATS",
    "SimulatorSettings",
    "SimulatorStats",
    "add_cli_arguments",
    "create_app",
    "run",
    "start",
]

logger = logging.getLogger("chatbot.simulator")


async def start(
    settings: SimulatorSettings, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve on the running loop; the caller owns the runner and must await runner.cleanup()."""
    # handler_cancellation: a client disconnect must cancel the handler even while it sleeps
    # before the first token, as Ollama cancels the request context. A short shutdown_timeout
    # keeps cleanup from waiting a minute on streams that are still running.
    runner = web.AppRunner(
        create_app(settings), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimulatorSettings()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=11434, help="port to bind (default %(default)s)"
    )
    parser.add_argument(
        "--tokens", type=int, default=defaults.tokens, help="tokens per answer (%(default)s)"
    )
    parser.add_argument(
        "--token-delay-ms",
        type=float,
        default=defaults.token_delay_ms,
        help="delay between tokens in ms (%(default)s)",
    )
    parser.add_argument(
        "--first-token-delay-ms",
        type=float,
        default=defaults.first_token_delay_ms,
        help="delay before the first token in ms (%(default)s)",
    )
    parser.add_argument(
        "--models",
        default=",".join(defaults.models),
        help="comma-separated model names to offer (%(default)s); several simulators on "
        "different ports with different lists play several Ollama hosts",
    )
    parser.add_argument(
        "--fault",
        choices=FAULT_MODES,
        default=defaults.fault,
        help="start failing: error answers every Ollama call with --fault-status, hang never "
        "answers (change it live with POST /simulator/fault) (%(default)s)",
    )
    parser.add_argument(
        "--fault-status",
        type=int,
        default=defaults.fault_status,
        help="HTTP status of --fault error, 500..599 (%(default)s)",
    )


def _settings_from_args(args: argparse.Namespace) -> SimulatorSettings:
    models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    problem = check_fault(args.fault, args.fault_status)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    return SimulatorSettings(
        tokens=args.tokens,
        token_delay_ms=args.token_delay_ms,
        first_token_delay_ms=args.first_token_delay_ms,
        models=models or SimulatorSettings().models,
        fault=args.fault,
        fault_status=args.fault_status,
    )


async def _serve_until_signalled(settings: SimulatorSettings, host: str, port: int) -> None:
    runner, bound = await start(settings, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no loop signal handlers
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    shown_host = f"[{host}]" if ":" in host else host
    # The models (and any fault) are logged so several simulators side by side can be told apart.
    logger.info(
        "Ollama simulator listening on http://%s:%d with %s%s",
        shown_host,
        bound,
        ", ".join(settings.models),
        "" if settings.fault == "none" else f" (fault: {settings.fault})",
    )
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    logger.info("Ollama simulator stopped")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; blocking."""
    settings = _settings_from_args(args)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_until_signalled(settings, args.host, args.port))
    except OSError as exc:
        # Most often the port is taken, e.g. by a real Ollama or another simulator.
        logger.error(
            "cannot listen on %s:%d: %s (pick another with --port)", args.host, args.port, exc
        )
        return 1
    return 0
