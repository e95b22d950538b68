"""Admission control for upstream generations: slots, a prioritized waiting line, positions, ETAs.

At most `max_concurrent` entries hold a slot at once; the rest wait in service order. Interactive
chat goes before batch work, but a batch entry that has waited longer than `aging_factor` times
the average generation time is served as if it were interactive (and, being older, ahead of
them), so a flood of chat traffic delays bulk jobs without ever starving them.

Within a priority, users take turns (start-time fair queuing): each entry gets a turn number
one past its owner's previous entry, but never below the turn being served now, and the line is
served in turn order. So one user's fifty queued requests do not make everyone else wait behind
them, and a newcomer gets the next turn rather than a backlog's worth of credit. Owners are API
keys' names (or a trusted user header); without keys every request has the same owner and the
line is first come, first served.

ETA = position × recent average generation time ÷ capacity, falling back to
`estimated_time_per_request_ms` until a generation has been measured. Capacity is
`max_concurrent`, or with several Ollama hosts (a `Router`), the slots of the hosts that can
serve the entry's model.

Several hosts, one line: each host has its own slots, and an entry can run only on a host that
can serve its model. When a slot frees, the line is walked in service order and each entry takes
a free slot on a host that can serve it, if there is one; an entry whose hosts are all busy
keeps its place and is skipped, so it never blocks a later entry that another host can serve
now. Fairness holds where it matters: a later entry only ever gets a slot that no earlier entry
could use at that moment.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.errors import QueueFull, TooManyRequests

log = logging.getLogger("chatbot.queue")

# How many recent generations the average (and so the ETA) is taken over.
_HISTORY = 20


class Slots(Protocol):
    """A place generations run: one Ollama host, with `running` of its slots taken."""

    running: int


class Router(Protocol):
    """Where an entry for a model may run (server.services.hosts.HostPool)."""

    def candidates(self, model: str, exclude: Sequence[Any] = ()) -> Sequence[Any]: ...

    def pick(self, model: str, exclude: Sequence[Any] = ()) -> Any | None: ...

    def alternatives(self, model: str, exclude: Sequence[Any] = ()) -> Sequence[Any]: ...

    def capacity(self, model: str | None = None) -> int: ...


@dataclass
class _Single:
    """The slots of the one Ollama of a queue without a router."""

    running: int = 0


class _Nowhere:
    """No host may serve the model: the entry is let through at once, to fail."""


NOWHERE = _Nowhere()


class Priority(enum.IntEnum):
    INTERACTIVE = 0
    BATCH = 1


class State(enum.Enum):
    WAITING = "waiting"
    ACTIVE = "active"
    DONE = "done"


@dataclass(eq=False)
class QueueEntry:
    """One place in line, for one upstream generation."""

    priority: Priority
    label: str = ""
    seq: int = 0
    owner: str = ""
    turn: int = 0
    enqueued_at: float = field(default_factory=time.monotonic)
    granted_at: float | None = None
    state: State = State.WAITING
    position: int = 0  # 1-based while waiting, 0 once it holds a slot
    on_change: Callable[[], None] | None = None
    model: str = ""  # "" (a reservation not claimed yet): any host
    # Where it runs once granted: a Host (with a router) or None when no host may serve the
    # model at all (its user answers "model not found").
    host: Any = None
    exclude: list[Any] = field(default_factory=list)  # hosts that failed it
    _granted: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def wait_ms(self) -> float:
        end = self.granted_at if self.granted_at is not None else time.monotonic()
        return (end - self.enqueued_at) * 1000


@dataclass
class QueueCounters:
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0
    granted: int = 0
    total_wait_ms: float = 0.0


class GenerationQueue:
    def __init__(
        self,
        *,
        max_concurrent: int = 1,
        max_queue_size: int = 100,
        estimated_ms: float = 30000,
        aging_factor: float = 4.0,
        router: Router | None = None,
    ) -> None:
        self.router = router
        self._single = _Single()
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.estimated_ms = estimated_ms
        self.aging_factor = aging_factor
        self.counters = QueueCounters()
        self._waiting: list[QueueEntry] = []
        self._active: set[QueueEntry] = set()
        self._history: deque[float] = deque(maxlen=_HISTORY)
        self._seq = itertools.count()
        self._serving_turn = 0  # the turn of the entry granted last
        self._last_turn: dict[str, int] = {}  # each owner's latest turn

    # -- figures ------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def avg_generation_ms(self) -> float:
        return sum(self._history) / len(self._history) if self._history else self.estimated_ms

    def capacity(self, model: str | None = None) -> int:
        """Generations that can run at once (for `model`: on the hosts that can serve it)."""
        return self.max_concurrent if self.router is None else self.router.capacity(model)

    def eta_ms(self, position: int, model: str | None = None) -> int:
        return round(position * self.avg_generation_ms / self.capacity(model or None))

    def retry_after_s(self) -> int:
        """What a rejected client is told to wait: until the line is about one place shorter."""
        return max(1, math.ceil(self.eta_ms(1) / 1000))

    # -- the line -----------------------------------------------------------------------------

    def enqueue(
        self,
        priority: Priority,
        *,
        label: str = "",
        on_change: Callable[[], None] | None = None,
        owner: str = "",
        max_waiting: int = 0,
        model: str = "",
    ) -> QueueEntry:
        """Take a place in line (or a slot at once); raise QueueFull when the line is full, or
        TooManyRequests when `owner` already has `max_waiting` (> 0) requests waiting."""
        entry = QueueEntry(
            priority, label, next(self._seq), owner=owner, on_change=on_change, model=model
        )
        # Nobody waiting could use a free slot (they would hold it already), so a newcomer that
        # finds one for its model takes it without passing anyone.
        slot = self._slot_for(entry)
        if slot is not None:
            self._take_turn(entry)
            self._grant(entry, slot)
            return entry
        if max_waiting and sum(e.owner == owner for e in self._waiting) >= max_waiting:
            self.counters.rejected += 1
            retry = str(self.retry_after_s())
            raise TooManyRequests(
                f"{owner or 'this user'} already has {max_waiting} requests waiting "
                f"([auth].max_waiting_per_user); try again in {retry} s",
                headers={"Retry-After": retry},
            )
        if len(self._waiting) >= self.max_queue_size:
            self.counters.rejected += 1
            raise QueueFull(
                f"the queue is full ({len(self._waiting)} waiting, [queue].max_queue_size = "
                f"{self.max_queue_size}); try again in {self.retry_after_s()} s",
                headers={"Retry-After": str(self.retry_after_s())},
            )
        self._take_turn(entry)
        self._waiting.append(entry)
        self._reorder()
        return entry

    def _take_turn(self, entry: QueueEntry) -> None:
        last = self._last_turn.get(entry.owner)
        entry.turn = self._serving_turn if last is None else max(last + 1, self._serving_turn)
        self._last_turn[entry.owner] = entry.turn
        if len(self._last_turn) > 10000:  # owners long done need no memory
            self._last_turn = {o: t for o, t in self._last_turn.items() if t >= self._serving_turn}

    async def wait_turn(self, entry: QueueEntry) -> None:
        """Wait until the entry holds a slot. Cancelling the wait leaves the line."""
        try:
            await entry._granted.wait()
        except asyncio.CancelledError:
            if entry.state is State.WAITING:
                self.release(entry, "cancelled")
            raise

    def release(self, entry: QueueEntry, outcome: str, generation_ms: float | None = None) -> None:
        """The entry is done (completed, cancelled, failed or unused): free its slot or place."""
        if entry.state is State.DONE:
            return
        was = entry.state
        entry.state = State.DONE
        if outcome == "completed":
            self.counters.completed += 1
            if generation_ms is not None:
                self._history.append(generation_ms)
        elif outcome == "cancelled":
            self.counters.cancelled += 1
        elif outcome == "failed":
            self.counters.failed += 1
        # "unused": a reservation given back because the request needed no generation.
        if was is State.WAITING:
            self._waiting.remove(entry)
        else:
            self._free(entry)
        self._fill_slots()

    def retarget(self, entry: QueueEntry, model: str) -> None:
        """A reservation learns its model: if the host it holds cannot serve it, it moves."""
        entry.model = model
        if (
            entry.state is State.ACTIVE
            and self.router is not None
            and entry.host not in self.router.candidates(model, entry.exclude)
        ):
            self._requeue(entry)
        self._fill_slots()

    def reroute(self, entry: QueueEntry, failed: Any) -> bool:
        """The entry's host failed it: give that slot back and wait for one on another host
        that has the model. False (nothing changed) when there is no such host."""
        if self.router is None or entry.state is not State.ACTIVE:
            return False
        if not self.router.alternatives(entry.model, [*entry.exclude, failed]):
            return False
        entry.exclude.append(failed)
        self._requeue(entry)
        self._fill_slots()
        return True

    def kick(self) -> None:
        """Hosts changed (up, down, models): waiting entries may be able to start now."""
        self._fill_slots()

    def _requeue(self, entry: QueueEntry) -> None:
        """An active entry goes back into line, ahead by its original turn and arrival."""
        self._free(entry)
        entry.state = State.WAITING
        entry._granted = asyncio.Event()
        self._waiting.append(entry)

    def _free(self, entry: QueueEntry) -> None:
        self._active.discard(entry)
        if entry.host is not None:
            entry.host.running -= 1
            entry.host = None

    def configure(self, *, max_concurrent: int, max_queue_size: int, estimated_ms: float) -> None:
        """Take new limits at run time. Nobody waiting or running is dropped: more slots are
        granted at once; fewer take effect as running generations finish; a smaller line only
        turns away newcomers."""
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.estimated_ms = estimated_ms
        self._fill_slots()

    def reset_stats(self) -> None:
        self.counters = QueueCounters()

    # -- internals ----------------------------------------------------------------------------

    def _slot_for(self, entry: QueueEntry) -> Slots | _Nowhere | None:
        """A free slot the entry can take now, NOWHERE if no host can ever serve its model, or
        None while they are all busy."""
        if self.router is None:
            return self._single if len(self._active) < self.max_concurrent else None
        if not self.router.candidates(entry.model, entry.exclude):
            return NOWHERE
        found: Slots | None = self.router.pick(entry.model, entry.exclude)
        return found

    def _grant(self, entry: QueueEntry, slot: Slots | _Nowhere) -> None:
        if isinstance(slot, _Nowhere):
            entry.host = None
        else:
            entry.host = slot
            slot.running += 1
        self._serving_turn = max(self._serving_turn, entry.turn)
        entry.state = State.ACTIVE
        entry.granted_at = time.monotonic()
        entry.position = 0
        self._active.add(entry)
        self.counters.granted += 1
        self.counters.total_wait_ms += entry.wait_ms
        entry._granted.set()
        if entry.on_change:
            entry.on_change()

    def _fill_slots(self) -> None:
        self._reorder()
        if self.router is None:
            while self._waiting and len(self._active) < self.max_concurrent:
                self._grant(self._waiting.pop(0), self._single)
        else:
            # In service order, each entry that can start somewhere now does (module docstring).
            for entry in list(self._waiting):
                slot = self._slot_for(entry)
                if slot is not None:
                    self._waiting.remove(entry)
                    self._grant(entry, slot)
        self._reorder()

    def _reorder(self) -> None:
        """Sort the line in service order and tell every entry whose position moved."""
        now = time.monotonic()
        aged_ms = self.aging_factor * self.avg_generation_ms

        def arrival(e: QueueEntry) -> tuple[int, float, int]:
            prio = e.priority
            if prio is Priority.BATCH and (now - e.enqueued_at) * 1000 >= aged_ms:
                prio = Priority.INTERACTIVE
            return (prio, e.enqueued_at, e.seq)

        def rank(e: QueueEntry) -> tuple[int, int, float, int]:
            prio, enqueued, seq = arrival(e)
            return (prio, e.turn, enqueued, seq)

        self._waiting.sort(key=rank)
        for pos, entry in enumerate(self._waiting, start=1):
            if entry.position != pos:
                entry.position = pos
                if entry.on_change:
                    entry.on_change()

    def stats(self) -> dict[str, float | int]:
        c = self.counters
        return {
            "max_concurrent": self.capacity(),
            "active": self.active,
            "waiting": self.waiting,
            "max_queue_size": self.max_queue_size,
            "completed": c.completed,
            "cancelled": c.cancelled,
            "failed": c.failed,
            "rejected": c.rejected,
            "avg_wait_ms": round(c.total_wait_ms / c.granted, 1) if c.granted else 0.0,
            "avg_generation_ms": round(sum(self._history) / len(self._history), 1)
            if self._history
            else 0.0,
            "estimated_time_per_request_ms": round(self.avg_generation_ms),
        }
