"""Screenshots of the dashboard's Overview while requests run and wait: the Live queue tab and
the Models tab, from the real app against the simulator, with API keys so the queue names users.

Run under an X server with a tray host, once per theme (scripts/overview_screenshots.sh does
both, on Xvfb with trayer):
    .venv/bin/python scripts/overview_screenshots.py OUTDIR SUFFIX
writes OUTDIR/overview-queue{SUFFIX}.png and OUTDIR/overview-models{SUFFIX}.png.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import qasync
from PySide6.QtWidgets import QApplication

from app.companion import Companion
from app.config_manager import ConfigManager, values_of
from app.controller import Controller
from app.qt_env import gdk_without_gl
from server import config_file, simulator
from server.auth import new_key
from server.config import default_toml, load
from server.logs import setup_logging

MODELS = ("llama3.2:latest", "qwen3:4b", "mistral:7b", "phi3:mini")


async def chat(
    http: aiohttp.ClientSession, base: str, key: str, question: str, model: str, **opts: Any
) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "stream": False,
        "options": opts,
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(f"{base}/api/chat", json=body, headers=headers) as resp:
        await resp.read()


async def shoot(out: Path, suffix: str) -> None:
    runner, sim_port = await simulator.start(
        simulator.SimulatorSettings(models=MODELS, tokens=30, token_delay_ms=8.0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(default_toml())
        values = values_of(load(path, env={}))
        values[("ollama", "api_url")] = f"http://127.0.0.1:{sim_port}"
        values[("queue", "max_concurrent")] = 2
        keys = {
            name: new_key(name, role)
            for name, role in (("alice", "admin"), ("bob", "user"), ("ci-runner", "batch"))
        }
        values[("auth", "keys")] = [entry for _key, entry in keys.values()]
        config_file.save(path, values)
        manager = ConfigManager(path)
        loaded = manager.load_initial(create=False)
        controller = Controller(loaded.config, path, port_override=0)
        companion = Companion(controller, manager, loaded=loaded)
        task = asyncio.ensure_future(companion.run())
        await asyncio.sleep(1.5)
        base = controller.api_url
        alice, bob, ci = (keys[n][0] for n in ("alice", "bob", "ci-runner"))
        async with aiohttp.ClientSession() as http:
            # Answers of about 3 s each (30 tokens, 100 ms apart), so the queue's average, and
            # with it the ETAs shown, is that of the answers still running and waiting.
            pace = {"sim_tokens": 30, "sim_token_delay_ms": 100}
            # Finished traffic first: misses two at a time, then repeats (hits), several models.
            await asyncio.gather(
                chat(http, base, alice, "What is a cache?", "llama3.2", **pace),
                chat(http, base, alice, "Explain queues", "llama3.2", **pace),
            )
            await asyncio.gather(
                chat(http, base, alice, "Write a haiku", "qwen3:4b", **pace),
                chat(http, base, alice, "Summarize this", "mistral:7b", **pace),
            )
            await chat(http, base, bob, "Why is the sky blue?", "phi3:mini", **pace)
            for question, model in (
                ("What is a cache?", "llama3.2"),
                ("Write a haiku", "qwen3:4b"),
                ("What is a cache?", "llama3.2"),
            ):
                await chat(http, base, bob, question, model, **pace)
            # Then more: two run, the rest wait their turn.
            waiting = [
                asyncio.ensure_future(chat(http, base, who, f"Long report {i}", model, **pace))
                for i, (who, model) in enumerate(
                    [
                        (alice, "llama3.2"),
                        (ci, "qwen3:4b"),
                        (bob, "llama3.2"),
                        (ci, "qwen3:4b"),
                        (alice, "mistral:7b"),
                        (bob, "llama3.2"),
                    ]
                )
            ]
            await controller.refresh_models()
            window = companion.dashboard
            window.show()
            window.resize(1040, 760)
            window.activity.setCurrentWidget(window.queue_view)
            await asyncio.sleep(1.6)
            window.grab().save(str(out / f"overview-queue{suffix}.png"))
            window.activity.setCurrentWidget(window.models_view)
            await asyncio.sleep(1.2)
            window.grab().save(str(out / f"overview-models{suffix}.png"))
            for job in waiting:
                job.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        companion.quit()
        await task
    await runner.cleanup()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    suffix = sys.argv[2] if len(sys.argv) > 2 else ""
    out.mkdir(parents=True, exist_ok=True)
    with gdk_without_gl():  # as the app starts Qt (app/qt_env.py), for an honest Memory tile
        app = QApplication([])
    setup_logging("info")
    with asyncio.Runner(loop_factory=lambda: qasync.QEventLoop(app)) as runner:
        runner.run(shoot(out, suffix))
    print(f"screenshots in {out}/")


if __name__ == "__main__":
    main()
