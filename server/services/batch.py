"""Batching: identical in-flight requests share one generation; bulk jobs run in groups.

Coalescing: a cacheable request whose twin is being generated right now listens to that
generation instead of starting its own (see generation.py for late joiners).

Bulk jobs (`POST /api/chat-batch`): items that need a generation are collected into groups of
up to `max_batch_size`; a group is sent on as soon as it is full, or `batch_timeout_ms` after
its first item arrived. Its items then wait in the queue at batch priority, so interactive chat
goes first. Items from concurrent bulk requests fill the same groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from server.services.generation import Generation

log = logging.getLogger("chatbot.batch")


class Coalescer:
    def __init__(self) -> None:
        self._inflight: dict[str, Generation] = {}
        self.coalesced = 0

    def join(self, key: str) -> Generation | None:
        gen = self._inflight.get(key)
        if gen is None or not gen.joinable():
            return None
        self.coalesced += 1
        return gen

    def register(self, key: str, gen: Generation) -> None:
        self._inflight[key] = gen

    def forget(self, key: str, gen: Generation) -> None:
        if self._inflight.get(key) is gen:
            del self._inflight[key]

    @property
    def inflight(self) -> int:
        return len(self._inflight)


class BulkProcessor:
    def __init__(
        self,
        run: Callable[[Any], Awaitable[Any]],
        *,
        max_batch_size: int,
        batch_timeout_ms: float,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.batch_timeout_ms = batch_timeout_ms
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, items: list[Any]) -> list[Any]:
        """Run every item (grouped with others); results in order, exceptions as values."""
        futures = [self._add(item) for item in items]
        try:
            return await asyncio.gather(*futures, return_exceptions=True)
        except asyncio.CancelledError:
            for fut in futures:
                fut.cancel()  # the client left: its items stop too
            raise

    def _add(self, item: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_batch_size:
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.batch_timeout_ms / 1000, self._on_timeout
            )
        return fut

    def _on_timeout(self) -> None:
        self._timer = None
        while self._pending:
            self._dispatch()

    def _dispatch(self) -> None:
        group = self._pending[: self.max_batch_size]
        self._pending = self._pending[self.max_batch_size :]
        if not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group = [(item, fut) for item, fut in group if not fut.cancelled()]
        if not group:
            return
        self.batches += 1
        self.items += len(group)
        log.info("batch %d: %d item(s) sent to the queue", self.batches, len(group))
        for item, fut in group:
            task: asyncio.Task[Any] = asyncio.ensure_future(self._run(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(_settle, fut))
            fut.add_done_callback(functools.partial(_cancel_if_cancelled, task))

    def configure(self, *, max_batch_size: int, batch_timeout_ms: float) -> None:
        self.max_batch_size = max_batch_size
        self.batch_timeout_ms = batch_timeout_ms
        while len(self._pending) >= self.max_batch_size:
            self._dispatch()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def pending(self) -> int:
        return len(self._pending)


def _cancel_if_cancelled(task: asyncio.Task[Any], fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        task.cancel()  # the bulk request's client left


def _settle(fut: asyncio.Future[Any], task: asyncio.Task[Any]) -> None:
    if fut.done():
        return
    if task.cancelled():
        fut.cancel()
    elif task.exception() is not None:
        fut.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        fut.set_result(task.result())
