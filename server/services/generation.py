"""One upstream generation, shared by every client that asked the identical question.

The generation runs as its own task: it waits for its turn in the queue, streams from Ollama,
collects the answer and stores it in the cache when (and only when) Ollama said it was done.
Each client is a listener that first receives what was already produced, then the live rest,
and while the generation waits, its position and ETA. When the last listener leaves, the task
is cancelled, which closes the upstream request (or leaves the queue).

With several Ollama hosts, the queue says which host runs it. If that host fails before the
first piece of the answer (refused, a 5xx, a timeout, a broken stream), the generation waits for
a slot on another host that has the model and starts again there, once; listeners see nothing
of it but a longer wait. After the first piece, a failure ends the answer with the error: a
second answer is never spliced onto the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from server.errors import Cancelled, GatewayError, ModelNotFound, UpstreamError
from server.json_checks import quote
from server.services.hosts import HostPool, host_failed
from server.services.ollama import OllamaClient
from server.services.queue import GenerationQueue, QueueEntry, State

log = logging.getLogger("chatbot.ollama")

# A waiting client hears its position at least this often, even when it does not move.
HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class Queued:
    """The answer waits for a free slot."""

    position: int
    estimated_wait_ms: int


# slots, not frozen: one is made per token, and a frozen dataclass's __init__ costs 5x more.
# Shared by every listener of the generation: never changed once made.
@dataclass(slots=True)
class Piece:
    """A piece of the answer, as Ollama produced it: text, reasoning, tool calls, and the
    upstream line it came in (`line`, without its newline), which a native client gets as
    it came."""

    text: str
    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    line: bytes | None = None


@dataclass(frozen=True)
class Answer:
    """A complete answer: what the cache keeps and a replay gives back."""

    text: str
    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    done_reason: str = "stop"
    prompt_eval_count: int = 0
    eval_count: int = 0
    context: tuple[int, ...] | None = None  # /api/generate's


def piece_of(chunk: dict[str, Any], line: bytes | None = None) -> Piece | None:
    """What one upstream chunk (of /api/chat or /api/generate, sent as `line`) adds to the
    answer."""
    message = chunk.get("message")
    if isinstance(message, dict):
        text, thinking = message.get("content") or "", message.get("thinking") or ""
        tool_calls = message.get("tool_calls") or ()
    else:
        text, thinking, tool_calls = chunk.get("response") or "", chunk.get("thinking") or "", ()
    if not (text or thinking or tool_calls):
        return None
    return Piece(str(text), str(thinking), tuple(tool_calls), line)


class Listener(Protocol):
    """What a generation needs to know about one client (a ticket)."""

    cancelled: bool


class Signal:
    """Wakes every waiter on each fire(). A waiter reads `count` *before* checking state and
    waits only if nothing fired since. Firing with nobody waiting is a counter increment, so
    a listener that is behind wakes once and takes everything it missed (an asyncio.Event per
    fire was an eighth of the CPU per relayed token)."""

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        self.count += 1
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self, since: int) -> None:
        """Until a fire after `count` was `since` (at once if one came)."""
        if self.count != since:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter.cancelled():  # timed out or cancelled: fire() did not take it out
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)


class Generation:
    def __init__(
        self,
        *,
        ollama: OllamaClient,
        queue: GenerationQueue,
        entry: QueueEntry,
        payload: dict[str, Any],
        path: str = "/api/chat",
        on_complete: Callable[[Answer], None] | None = None,
        on_finish: Callable[[Generation], None] | None = None,
        hosts: HostPool | None = None,
    ) -> None:
        self.ollama = ollama
        self.hosts = hosts
        self.queue = queue
        self.entry = entry
        self.payload = payload
        self.path = path
        self.pieces: list[Piece] = []
        self.final: dict[str, Any] | None = None  # Ollama's done chunk
        self.tokens = 0
        self.error: GatewayError | None = None
        self.finished = False
        self.completed = False
        self.listeners = 0
        self.signal = Signal()
        self.started_at = time.monotonic()
        self.first_token_at: float | None = None
        self._on_complete = on_complete
        self._on_finish = on_finish
        entry.on_change = self.signal.fire
        self.task = asyncio.create_task(self._run(), name=f"generation {entry.label}")
        self.task.add_done_callback(self._on_task_done)

    @property
    def waiting(self) -> bool:
        return self.entry.state is State.WAITING

    def answer(self) -> Answer:
        final = self.final or {}
        context = final.get("context")
        return Answer(
            text="".join(p.text for p in self.pieces),
            thinking="".join(p.thinking for p in self.pieces),
            tool_calls=tuple(call for p in self.pieces for call in p.tool_calls),
            done_reason=str(final.get("done_reason") or "stop"),
            prompt_eval_count=int(final.get("prompt_eval_count") or 0),
            eval_count=int(final.get("eval_count") or 0),
            context=tuple(context) if isinstance(context, list) else None,
        )

    async def _run(self) -> None:
        outcome, generation_ms = "failed", None
        try:
            await self.queue.wait_turn(self.entry)
            began = time.monotonic()
            while not await self._stream():
                await self.queue.wait_turn(self.entry)  # a slot on another host
                began = time.monotonic()
            generation_ms = (time.monotonic() - began) * 1000
            # Only here, after Ollama's done chunk, is the answer complete: failed, timed-out,
            # cancelled and abandoned generations never reach this line, so none is cached.
            self.completed = True
            outcome = "completed"
            if self._on_complete is not None:
                self._on_complete(self.answer())
        except GatewayError as exc:
            self.error = exc
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._finalize(outcome, generation_ms)

    async def _stream(self) -> bool:
        """Stream the answer from the entry's host. False: that host failed before the first
        piece and the entry is back in line for another one (see the module docstring)."""
        host, client = self.entry.host, self.ollama
        if self.hosts is not None:
            model = str(self.payload.get("model", ""))
            if host is None:
                raise ModelNotFound(
                    f"model {quote(model)} is not served by any Ollama host (the `models` "
                    "lists of [[ollama.hosts]] leave it out)"
                )
            client = host.client
        try:
            async for lines in client.chat_stream(self.payload, self.path):
                had = len(self.pieces)
                for chunk, line in lines:
                    piece = piece_of(chunk, line)
                    if piece is not None:
                        self.pieces.append(piece)
                    if chunk.get("done"):
                        self.final = chunk
                        self.tokens = int(chunk.get("eval_count") or 0)
                grew = len(self.pieces) > had
                if grew and self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                if grew or self.final is not None:
                    self.signal.fire()  # one wake-up for all the lines of this read
        except GatewayError as exc:
            if self.hosts is None:
                raise
            self.hosts.note_failure(host, exc)
            retry = not self.pieces and not self.entry.exclude and host_failed(exc)
            if not (retry and self.queue.reroute(self.entry, host)):
                raise
            log.warning("%s: %s; trying another host", self.entry.label, exc.message)
            return False
        if self.hosts is not None:
            self.hosts.note_success(host, model)
        return True

    def _finalize(self, outcome: str, generation_ms: float | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.queue.release(self.entry, outcome, generation_ms)
        if self._on_finish is not None:
            self._on_finish(self)
        self.signal.fire()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs _run's finally: clean up here.
        self._finalize("cancelled")

    def joinable(self) -> bool:
        return not self.finished and not self.task.cancelled()

    async def listen(self, listener: Listener) -> AsyncIterator[Queued | Piece]:
        """Events for one client: Queued while waiting, then every Piece from the first.

        Returns when the answer is complete; raises the generation's error, or Cancelled when
        the listener was cancelled. Leaving early (closing the iterator) detaches the listener.
        """
        self.listeners += 1
        sent = 0
        last_position, last_told = -1, 0.0
        try:
            while True:
                fired = self.signal.count
                if listener.cancelled:
                    raise Cancelled("request cancelled (DELETE /api/chat-queue)")
                if self.waiting:
                    now = time.monotonic()
                    position = self.entry.position
                    if position != last_position or now - last_told >= HEARTBEAT_S:
                        last_position, last_told = position, now
                        yield Queued(position, self.queue.eta_ms(position, self.entry.model))
                while sent < len(self.pieces):
                    sent += 1
                    yield self.pieces[sent - 1]
                if self.finished:
                    if self.completed:
                        return
                    if self.error is not None:
                        # A fresh exception per listener, with the status (Ollama's 503 stays
                        # a 503, not a 502).
                        raise self.error.copy()
                    raise UpstreamError("the generation was stopped before it finished")
                if not self.waiting:
                    await self.signal.wait(fired)
                    continue
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that comes as the signal fires.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT_S):
                        await self.signal.wait(fired)
        finally:
            self.listeners -= 1
            if self.listeners == 0 and not self.finished:
                # Nobody listens any more: stop generating (or leave the queue).
                self.task.cancel()
