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

ETA: the N slots (N = `max_concurrent`, or with several Ollama hosts (a `Router`), the slots
of the hosts that can serve the entry's model) serve the line in rounds: positions 1..N start
as the running generations end, N+1..2N one average generation later, and so on. So position p
waits (ceil(p / N) − 1) × average, plus the time left to the k-th running generation to end
(k = (p − 1) mod N + 1, counting the one closest to its end first): average − its elapsed time,
at least 0; a free slot has none left. The average is that of the last 20 generations; after a
restart, those measured before it (when `[queue].state_file` keeps them, see `TimingStore`);
with nothing measured yet, `estimated_time_per_request_ms`, a hand-set figure that a running
generation is then taken to need in full (elapsed time is not subtracted from a guess).

Positions are numbered lazily and told sparingly (issue #19: ten thousand waiting clients). The
line is kept sorted (insertions by binary search, no re-sort per change); a position is read by a
binary search for the entry's rank, and the line is renumbered only when enough positions are
read between two changes to make that cheaper. A change that moves waiting entries (one leaves
the line, one is put in ahead of others) does not walk the line to tell them: each entry's
position is looked at on its own schedule, a heap of looks behind one timer:

- An entry told position p is not told again until interval(p) has passed, where interval(p) =
  clamp(ceil(p / K), 1, 30) × `notify_interval_s` (1 s) and K = `notify_positions` (100): every
  second for the first hundred, every 2 s for the next hundred, ..., every 30 s from 2,901 on.
- Once interval(p) has passed, it is told its position at the first look that finds it moved:
  looks come every interval(p) while the line changes, and a move after a quiet spell (nothing
  moved since the entry's last look) is looked at at once. So a move is heard within interval(p)
  of it, and when the line goes quiet each entry's last notice is its real position within
  interval(p). Being granted a slot is told at once.

Why grow with p: near the front a client waits seconds and each move matters; far back it waits
minutes, a move is a small part of the way, and telling it every second made a drain cost N × the
drain time = O(N²) notices. With interval ∝ p, a client at p hears again once the line has served
about rate × p / K more, a fixed fraction of the way left, so its notices over the wait are about
(K / rate) × (1 + ln(p / K)) and a drain of N costs O(N log N) notices (and looks), as long as
N stays under 30 K; past that the 30 s cap bounds the silence, at N / (30 × rate) more notices
per far entry. When moves come slower than the intervals (slow generations), every move is
told, as before: O(N) notices per freed slot, but never more than the intervals allow, about
K × (1 + ln 30) + N / 30 a second. A streamed client also hears the current position with its
listener's 5 s heartbeat, so a far-back stream still sees where it is every 5 s; GET
/api/chat-queue and the dashboards read positions straight from the line, always exact.

Several hosts, one line: each host has its own slots, and an entry can run only on a host that
can serve its model. When a slot frees, the line is walked in service order and each entry takes
a free slot on a host that can serve it, if there is one; an entry whose hosts are all busy
keeps its place and is skipped, so it never blocks a later entry that another host can serve
now. Fairness holds where it matters: a later entry only ever gets a slot that no earlier entry
could use at that moment.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any, Protocol

from server.errors import QueueFull, TooManyRequests

log = logging.getLogger("chatbot.queue")

# How many recent generations the average (and so the ETA) is taken over.
_HISTORY = 20
# Notices of a new position (module docstring): an entry told position p is told again no sooner
# than clamp(ceil(p / NOTIFY_POSITIONS), 1, NOTIFY_MAX_STEPS) x NOTIFY_INTERVAL_S later.
NOTIFY_INTERVAL_S = 1.0
NOTIFY_POSITIONS = 100
NOTIFY_MAX_STEPS = 30
# (delay in seconds, callback): how the queue asks to be called back later (call_later).
Schedule = Callable[[float, Callable[[], None]], object]

_RANK = attrgetter("rank")


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
    on_change: Callable[[], None] | None = None
    model: str = ""  # "" (a reservation not claimed yet): any host
    # Where it runs once granted: a Host (with a router) or None when no host may serve the
    # model at all (its user answers "model not found").
    host: Any = None
    exclude: list[Any] = field(default_factory=list)  # hosts that failed it
    # Service order: (priority, as aged, turn, arrival, seq); unique, so it also finds the entry.
    rank: tuple[int, int, float, int] = (0, 0, 0.0, 0)
    _granted: asyncio.Event = field(default_factory=asyncio.Event)
    _line: GenerationQueue | None = None
    _pos: int = 0  # numbered lazily by the queue
    _told: int = 0  # the position it was last told (by its first frame, or on_change)
    _told_at: float = -math.inf  # when on_change told it
    _seen: int = -1  # the queue's count of moves when its position was last looked at
    _check: int = -1  # the id of its pending look (heap or parked); older ones are void

    @property
    def position(self) -> int:
        """1-based while waiting, 0 once it holds a slot (or is done)."""
        if self.state is not State.WAITING:
            return 0
        line = self._line
        if line is not None and line._stale:
            return line._position_of(self)
        return self._pos

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
        notify_interval_s: float = NOTIFY_INTERVAL_S,
        notify_positions: float = NOTIFY_POSITIONS,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
    ) -> None:
        self.router = router
        self._single = _Single()
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self.estimated_ms = estimated_ms
        self.aging_factor = aging_factor
        self.notify_interval_s = notify_interval_s
        self.notify_positions = notify_positions  # math.inf: every entry at notify_interval_s
        self._clock = clock
        self._schedule = schedule
        self.counters = QueueCounters()
        self._waiting: list[QueueEntry] = []  # in service order: sorted by rank
        self._active: set[QueueEntry] = set()
        self._history: deque[float] = deque(maxlen=_HISTORY)
        self._seq = itertools.count()
        self._serving_turn = 0  # the turn of the entry granted last
        self._last_turn: dict[str, int] = {}  # each owner's latest turn
        self._waiting_by_owner: dict[str, int] = {}
        # Waiting entries per routing key (model, hosts excluded): a walk of the line for free
        # slots stops once every key in it has found its hosts busy.
        self._keys: dict[Hashable, int] = {}
        # Batch entries not yet served as interactive, by arrival (a heap): see _promote_aged.
        self._aging: list[tuple[float, int, QueueEntry]] = []
        self._stale = False  # some waiting entry's _pos is out of date
        self._stale_reads = 0  # positions read by binary search since the line went stale
        self._moves = 0  # changes that moved some waiting entry
        # Looks at waiting entries' positions: (when, check id, entry), soonest first; and those
        # to look at on the next move (nothing has moved since they were last looked at).
        self._checks: list[tuple[float, int, QueueEntry]] = []
        self._parked: list[tuple[int, QueueEntry]] = []
        self._check_ids = itertools.count()
        self._timer_at = math.inf  # when the pending timer looks (only the latest one counts)
        self._timer = 0
        self.notices = 0  # on_change calls for moved positions (a figure for bench/)
        self.looks = 0  # positions looked at for notices (a figure for bench/)

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

    @property
    def measured(self) -> bool:
        """Whether the average comes from real generations (here, or kept from before a
        restart) rather than `estimated_time_per_request_ms`."""
        return bool(self._history)

    def recent_generations(self) -> list[float]:
        """The generation times the average is taken over, oldest first (for TimingStore)."""
        return list(self._history)

    def remember(self, samples: Sequence[float]) -> None:
        """Start from generation times measured before a restart (newest last); those measured
        from now on push them out."""
        self._history.extend(float(ms) for ms in samples if ms > 0)

    def capacity(self, model: str | None = None) -> int:
        """Generations that can run at once (for `model`: on the hosts that can serve it)."""
        return self.max_concurrent if self.router is None else self.router.capacity(model)

    def eta_ms(self, position: int, model: str | None = None) -> int:
        """How long the entry at `position` will wait for a slot (module docstring)."""
        if position <= 0:
            return 0
        slots = self.capacity(model or None)
        rounds, k = divmod(position - 1, slots)
        avg = self.avg_generation_ms
        left = self._time_left_ms(slots, model or None, avg)
        return round(rounds * avg + left[k])

    def _time_left_ms(self, slots: int, model: str | None, avg: float) -> list[float]:
        """Per slot that can serve `model`, the time until it frees, soonest first."""
        now = self._clock()
        running = self._active
        if self.router is not None and model:
            hosts = self.router.candidates(model)
            running = {e for e in running if any(e.host is h for h in hosts)}
        measured = self.measured
        left = sorted(
            max(0.0, avg - (now - e.granted_at) * 1000)
            if measured and e.granted_at is not None
            else avg
            for e in running
        )[:slots]
        return [0.0] * (slots - len(left)) + left

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
            priority,
            label,
            next(self._seq),
            owner=owner,
            on_change=on_change,
            model=model,
            enqueued_at=self._clock(),
        )
        entry._line = self
        # Nobody waiting could use a free slot (they would hold it already), so a newcomer that
        # finds one for its model takes it without passing anyone.
        slot = self._slot_for(entry)
        if slot is not None:
            self._take_turn(entry)
            self._grant(entry, slot)
            return entry
        if max_waiting and self._waiting_by_owner.get(owner, 0) >= max_waiting:
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
        self._promote_aged()  # aged batch work goes ahead of this newcomer
        entry.rank = (priority, entry.turn, entry.enqueued_at, entry.seq)
        self._add(entry)
        # Its listener's first frame tells it where it is: next looked at on a move.
        entry._told = entry.position
        entry._seen = self._moves
        self._park(entry)
        self._announce()
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
            self._remove(self._index(entry))
        else:
            self._free(entry)
        entry.state = State.DONE
        self._fill_slots()

    def retarget(self, entry: QueueEntry, model: str) -> None:
        """A reservation learns its model: if the host it holds cannot serve it, it moves."""
        waiting = entry.state is State.WAITING
        if waiting:
            self._count_key(entry, -1)
        entry.model = model
        if waiting:
            self._count_key(entry, +1)
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
        entry._told, entry._told_at = 0, -math.inf
        self._add(entry)
        self._look_at(entry, self._clock())  # back in line: told where, at the next look

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

    # -- internals: the sorted line -------------------------------------------------------------

    def _add(self, entry: QueueEntry) -> None:
        """Put a waiting entry in its place in service order."""
        self._place(entry)
        self._waiting_by_owner[entry.owner] = self._waiting_by_owner.get(entry.owner, 0) + 1
        self._count_key(entry, +1)
        if entry.priority is Priority.BATCH and entry.rank[0] == Priority.BATCH:
            heapq.heappush(self._aging, (entry.enqueued_at, entry.seq, entry))

    def _place(self, entry: QueueEntry) -> None:
        line = self._waiting
        at = bisect.bisect_right(line, entry.rank, key=_RANK)
        line.insert(at, entry)
        if at == len(line) - 1:
            # Last in line: nobody moved, and its position is the line's length either way.
            entry._pos = len(line)
        else:
            self._moved()

    def _remove(self, at: int) -> QueueEntry:
        entry = self._waiting.pop(at)
        owner = entry.owner
        left = self._waiting_by_owner[owner] - 1
        if left:
            self._waiting_by_owner[owner] = left
        else:
            del self._waiting_by_owner[owner]
        self._count_key(entry, -1)
        if at < len(self._waiting):  # those behind it moved up
            self._moved()
        elif not self._waiting:  # nobody left to tell: pending looks are all void
            self._checks.clear()
            self._parked.clear()
        return entry

    def _index(self, entry: QueueEntry) -> int:
        at = bisect.bisect_left(self._waiting, entry.rank, key=_RANK)
        if at < len(self._waiting) and self._waiting[at] is entry:
            return at
        return self._waiting.index(entry)  # not expected: ranks are unique and unchanged

    def _count_key(self, entry: QueueEntry, step: int) -> None:
        if self.router is None:
            return
        key = _route_key(entry)
        count = self._keys.get(key, 0) + step
        if count > 0:
            self._keys[key] = count
        else:
            self._keys.pop(key, None)

    def _promote_aged(self) -> None:
        """Batch entries that have waited `aging_factor` × the average are served as
        interactive from then on (their turn and arrival keep their place among those)."""
        aging = self._aging
        if not aging:
            return
        oldest = self._clock() - self.aging_factor * self.avg_generation_ms / 1000
        while aging:
            enqueued_at, _, entry = aging[0]
            if entry.state is State.WAITING and entry.rank[0] == Priority.BATCH:
                if enqueued_at > oldest:
                    return
                line_at = self._index(entry)
                self._waiting.pop(line_at)
                entry.rank = (Priority.INTERACTIVE, *entry.rank[1:])
                self._place(entry)
                self._moved()
            heapq.heappop(aging)

    def _moved(self) -> None:
        """Some waiting entries moved: numbers are stale, and those parked are looked at."""
        self._stale = True
        self._stale_reads = 0
        self._moves += 1
        if self._parked:
            parked, self._parked = self._parked, []
            now = self._clock()
            for check, entry in parked:
                if entry._check == check and entry.state is State.WAITING:
                    self._look_at(entry, now)

    def _position_of(self, entry: QueueEntry) -> int:
        """A waiting entry's position in a stale line: by binary search, O(log n), until as
        many have been read since the change as make renumbering, O(n), the cheaper way."""
        self._stale_reads += 1
        if self._stale_reads > 8 + (len(self._waiting) >> 5):
            self._renumber()
            return entry._pos
        return self._index(entry) + 1

    def _renumber(self) -> None:
        for pos, entry in enumerate(self._waiting, start=1):
            entry._pos = pos
        self._stale = False

    # -- internals: slots and notices -----------------------------------------------------------

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
        entry.granted_at = self._clock()
        self._active.add(entry)
        self.counters.granted += 1
        self.counters.total_wait_ms += (entry.granted_at - entry.enqueued_at) * 1000
        entry._granted.set()
        if entry.on_change:
            entry.on_change()  # its turn came: told at once, never coalesced

    def _fill_slots(self) -> None:
        self._promote_aged()
        line = self._waiting
        if self.router is None:
            while line and len(self._active) < self.max_concurrent:
                self._grant(self._remove(0), self._single)
        else:
            # In service order, each entry that can start somewhere now does (module
            # docstring). Entries with a key whose hosts were all busy are skipped without
            # asking the router again; once every key is, nobody further can start.
            busy: set[Hashable] = set()
            at = 0
            while at < len(line) and len(busy) < len(self._keys):
                entry = line[at]
                key = _route_key(entry)
                if key not in busy:
                    slot = self._slot_for(entry)
                    if slot is not None:
                        self._grant(self._remove(at), slot)
                        continue
                    busy.add(key)
                at += 1
        self._announce()

    def notice_interval_s(self, position: int) -> float:
        """How long after telling an entry `position` it may be told again (module docstring)."""
        steps = math.ceil(position / self.notify_positions)
        return min(NOTIFY_MAX_STEPS, max(1, steps)) * self.notify_interval_s

    def _park(self, entry: QueueEntry) -> None:
        """Look at the entry on the next move (until one, its position cannot change)."""
        entry._check = check = next(self._check_ids)
        self._parked.append((check, entry))

    def _check_at(self, entry: QueueEntry, when: float) -> None:
        entry._check = check = next(self._check_ids)
        heapq.heappush(self._checks, (when, check, entry))

    def _look_at(self, entry: QueueEntry, now: float) -> None:
        """Look at the entry as soon as its interval since its last notice has passed."""
        self._check_at(entry, max(now, entry._told_at + self.notice_interval_s(entry._told)))

    def _announce(self) -> None:
        """After a change: the looks that are due now happen now, the next is timed."""
        checks = self._checks
        if not checks:
            return
        when = checks[0][0]
        if when <= self._clock():
            self._look()
            return
        if when >= self._timer_at:
            return  # the pending timer comes first, and times the next one
        schedule = self._schedule
        if schedule is None:
            try:
                schedule = asyncio.get_running_loop().call_later
            except RuntimeError:  # no loop (a script driving the queue): look now
                self._look(math.inf)
                return
        self._timer += 1
        self._timer_at = when
        schedule(when - self._clock(), partial(self._on_timer, self._timer))

    def _on_timer(self, timer: int) -> None:
        if timer == self._timer:  # else a later change timed an earlier look
            self._timer_at = math.inf
            self._look()

    def _look(self, until: float | None = None) -> None:
        """The due looks: an entry that moved is told; one that did not is looked at again
        after its interval, or, when nothing at all has moved since, on the next move."""
        now = self._clock()
        until = now if until is None else until
        checks = self._checks
        while checks and checks[0][0] <= until:
            _, check, entry = heapq.heappop(checks)
            if entry._check != check or entry.state is not State.WAITING:
                continue  # it left the line, or has a newer look
            self.looks += 1
            position = entry.position
            if position != entry._told:
                entry._told, entry._told_at, entry._seen = position, now, self._moves
                self._check_at(entry, now + self.notice_interval_s(position))
                self.notices += 1
                if entry.on_change:
                    entry.on_change()
            elif entry._seen == self._moves:
                self._park(entry)
            else:
                entry._seen = self._moves
                self._check_at(entry, now + self.notice_interval_s(position))
        self._announce()

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


def _route_key(entry: QueueEntry) -> Hashable:
    """What decides where an entry may run: its model, and the hosts that failed it."""
    if not entry.exclude:
        return entry.model
    return (entry.model, *map(id, entry.exclude))
