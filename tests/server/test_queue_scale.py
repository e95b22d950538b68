"""The queue with thousands waiting (#19): coalesced position notices, no quadratic work, ETAs in
rounds of slots, and the generation times kept across a restart.

The queue is driven on a simulated clock (its `clock` and `schedule` hooks), so nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from server.services.hosts import HostPool, host_specs
from server.services.queue import GenerationQueue, Priority, QueueEntry, State
from tests.conftest import ROOT, make_config, user
from tests.server.test_queue_http import Streamer, slow, until

I = Priority.INTERACTIVE  # noqa: E741 - reads like the priority class


class SimClock:
    """Simulated time: `now`, and callbacks that run when `advance` passes their due time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0

    def __call__(self) -> float:
        return self.now

    def schedule(self, delay: float, callback: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self._due, (self.now + delay, self._n, callback))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._due and self._due[0][0] <= end:
            at, _, callback = heapq.heappop(self._due)
            self.now = max(self.now, at)
            callback()
        self.now = end


def sim_queue(clock: SimClock, **kw: Any) -> GenerationQueue:
    kw.setdefault("max_queue_size", 20000)
    kw.setdefault("estimated_ms", 30000)
    return GenerationQueue(clock=clock, schedule=clock.schedule, **kw)


def watch(entries: list[QueueEntry], clock: SimClock) -> dict[int, list[tuple[float, int]]]:
    """Per entry (by seq): when it was told of a new position, and which."""
    heard: dict[int, list[tuple[float, int]]] = {e.seq: [] for e in entries}

    def hook(e: QueueEntry) -> Callable[[], None]:
        return lambda: heard[e.seq].append((clock.now, e.position))

    for e in entries:
        e.on_change = hook(e)
    return heard


# -- position notices: sparser the further back -------------------------------------------------


def interval(position: int) -> float:
    """The rule (server/services/queue.py): clamp(ceil(p / 100), 1, 30) seconds."""
    return float(min(30, max(1, -(-position // 100))))


class Drain:
    """A line of `waiting` behind `slots` running generations, drained one generation at a time.

    With `fresh`, after every step each waiting entry is checked against the rule's staleness
    bound: a position that differs from the last one it heard (p) has done so for at most
    interval(p) — positions change only at steps, so the time it started to differ is exact.
    """

    def __init__(self, clock: SimClock, waiting: int, slots: int = 4, **kw: Any) -> None:
        self.clock = clock
        self.q = sim_queue(clock, max_concurrent=slots, **kw)
        self.running = deque(self.q.enqueue(I, label=f"r{i}") for i in range(slots))
        self.line = [self.q.enqueue(I, label=f"w{i}") for i in range(waiting)]
        self.joined = {e.seq: e.position for e in self.line}  # what its first frame said
        self.heard = watch(self.line, clock)
        self.stale_since: dict[int, float] = {}

    def told(self, e: QueueEntry) -> int:
        heard = self.heard[e.seq]
        return heard[-1][1] if heard else self.joined[e.seq]

    def step(self, every: float, *, fresh: bool = False) -> None:
        self.clock.advance(every)
        if fresh:
            self.check_fresh()
        self.q.release(self.running.popleft(), "completed", 100)
        started = 0  # those granted a slot are at the front of the line
        while started < len(self.line) and self.line[started].state is State.ACTIVE:
            self.running.append(self.line[started])
            started += 1
        del self.line[:started]
        if fresh:
            self.check_fresh()

    def check_fresh(self) -> None:
        now = self.clock.now
        for e in self.line:
            told = self.told(e)
            if told == e.position:
                self.stale_since.pop(e.seq, None)
                continue
            since = self.stale_since.setdefault(e.seq, now)
            assert now - since <= interval(told) + 1e-9, (e.seq, told, e.position, now - since)

    def run(self, every: float, steps: int | None = None, *, fresh: bool = False) -> None:
        for _ in range(steps if steps is not None else len(self.line)):
            if not self.line:
                break
            self.step(every, fresh=fresh)


def moves(heard: list[tuple[float, int]]) -> list[tuple[float, int]]:
    return [(t, position) for t, position in heard if position > 0]  # 0: its turn came


async def test_an_entry_told_p_hears_again_exactly_interval_p_later_while_the_line_moves():
    """The rule's bounds, both ways: never sooner than interval(p) after being told p, and no
    later either while the line keeps moving (a slot frees every 25 ms)."""
    clock = SimClock()
    drain = Drain(clock, waiting=4000)
    drain.run(0.025, steps=2400)  # 60 simulated seconds
    gaps = {1.0: 0, 2.0: 0, 15.0: 0, 30.0: 0}
    for heard in drain.heard.values():
        for (t1, p1), (t2, _) in itertools.pairwise(moves(heard)):
            assert t2 - t1 == pytest.approx(interval(p1)), (p1, t2 - t1)
            gaps[interval(p1)] = gaps.get(interval(p1), 0) + 1
    # Near ones every second, far ones every 2..30 s: each kind was seen.
    assert all(count > 0 for count in gaps.values()), gaps


async def test_near_entries_hear_every_second_and_far_ones_far_less_often():
    clock = SimClock()
    drain = Drain(clock, waiting=4000)
    drain.run(0.25, steps=40)  # 10 s, a slot freed every 250 ms: the line moves up by 40
    told = [len(moves(drain.heard[e.seq])) for e in drain.line]
    # The first move is told at once, then once a second within the first hundred (those that
    # joined at 61-100 were there all along)...
    assert min(told[20:60]) >= 10
    # ...every 5 s at 401-500 (twice more in 10 s), and every 30 s from 2,901 on (not again).
    assert max(told[360:460]) <= 3 and set(told[2900:]) == {1}


async def test_no_position_stays_stale_longer_than_its_interval_even_when_the_line_goes_quiet():
    clock = SimClock()
    drain = Drain(clock, waiting=2000)
    for burst in range(5):
        drain.run(0.025, steps=150, fresh=True)  # a slot frees every 25 ms for 3.75 s
        # Someone in the middle gives up: those behind move; then nothing happens for 40 s.
        drain.q.release(drain.line.pop(len(drain.line) // 2), "cancelled")
        drain.check_fresh()
        for _ in range(40):
            clock.advance(1.0)
            drain.check_fresh()
        # Longer than any interval: everyone's last notice is where it is now.
        assert all(drain.told(e) == e.position for e in drain.line), burst


async def test_entries_pushed_back_by_chat_ahead_of_them_hear_it_by_the_same_rule():
    clock = SimClock()
    q = sim_queue(clock, max_concurrent=1, aging_factor=1000)
    q.enqueue(I)
    bulk = [q.enqueue(Priority.BATCH) for _ in range(300)]
    heard = watch(bulk, clock)
    start = clock.now
    for _ in range(50):
        q.enqueue(I)  # chat goes ahead of the bulk work; the first move after quiet: told now
    first = [heard[e.seq] for e in (bulk[0], bulk[99], bulk[299])]
    assert first == [[(start, 2)], [(start, 101)], [(start, 301)]]
    clock.advance(0.5)
    for _ in range(100):
        q.enqueue(I)  # the rest, within their interval: told once it has passed, not before
    clock.advance(10)
    # interval(2) = 1 s, interval(101) = 2 s, interval(301) = 4 s.
    assert heard[bulk[0].seq][1:] == [(start + 1, 151)]
    assert heard[bulk[99].seq][1:] == [(start + 2, 250)]
    assert heard[bulk[299].seq][1:] == [(start + 4, 450)]


async def test_draining_the_line_costs_n_log_n_notices_not_n_squared():
    def drain_notices(n: int, **kw: Any) -> tuple[int, int]:
        clock = SimClock()
        drain = Drain(clock, waiting=n, **kw)
        drain.run(0.025)  # the same service rate for both: 40 generations a second
        assert not drain.line
        return drain.q.notices, drain.q.looks

    small, large = drain_notices(1000), drain_notices(4000)
    # Four times the line, a four times longer drain: told every second, 16 x the notices.
    every_second = drain_notices(1000, notify_positions=math.inf)
    every_second_large = drain_notices(4000, notify_positions=math.inf)
    assert 14 < every_second_large[0] / every_second[0] < 17
    assert large[0] / small[0] < 8 and large[1] / small[1] < 8  # ~ 4 x ln(4000/100)/ln(1000/100)
    assert large[0] < every_second_large[0] / 5


async def test_the_first_move_after_a_quiet_second_is_told_at_once():
    clock = SimClock()
    q = sim_queue(clock, max_concurrent=1)
    running = q.enqueue(I)
    waiting = [q.enqueue(I) for _ in range(3)]
    heard = watch(waiting, clock)
    q.release(running, "completed", 100)  # waiting[0] starts: told at once (its turn)
    assert heard[waiting[1].seq] == [(clock.now, 1)] and heard[waiting[2].seq] == [(clock.now, 2)]
    q.release(waiting[0], "completed", 100)  # within the second: gathered, not told yet
    assert waiting[2].position == 1  # positions read are exact all the same
    assert heard[waiting[2].seq] == [(clock.now, 2)]
    clock.advance(1.0)
    assert heard[waiting[2].seq][-1] == (clock.now, 1)


async def test_draining_ten_thousand_asks_the_router_a_constant_number_of_times_per_slot():
    """With hosts (the gateway always has a HostPool), each freed slot walks the line only
    until every model in it found its hosts busy: O(1) per slot, not O(waiting)."""

    class CountingPool(HostPool):
        picks = 0

        def pick(self, model: str, exclude: Any = ()) -> Any:
            CountingPool.picks += 1
            return super().pick(model, exclude)

    pool = CountingPool(host_specs(make_config(queue__max_concurrent=2)))
    clock = SimClock()
    q = sim_queue(clock, router=pool)
    entries = [q.enqueue(I, model="llama3.2") for _ in range(10000)]
    CountingPool.picks = 0
    for e in entries:  # in service order: the two running end, the next two start...
        if e.state is State.WAITING:
            assert e.position <= 2
        q.release(e, "completed", 50)
        clock.advance(0.01)
    assert q.waiting == 0 and q.active == 0
    assert CountingPool.picks <= 2 * len(entries)


# -- ETAs -------------------------------------------------------------------------------------


def measured_queue(clock: SimClock, slots: int, avg_ms: float) -> GenerationQueue:
    q = sim_queue(clock, max_concurrent=slots)
    q.remember([avg_ms] * 20)
    return q


async def test_eta_counts_rounds_of_slots_after_a_burst():
    clock = SimClock()
    q = measured_queue(clock, slots=4, avg_ms=1000)
    for _ in range(4):
        q.enqueue(I)  # a burst: four start together
    clock.advance(0.25)
    # Positions 1-4 start when those four end (750 ms left), 5-8 a generation later.
    assert [q.eta_ms(p) for p in (1, 2, 3, 4, 5, 8, 9)] == [750, 750, 750, 750, 1750, 1750, 2750]
    # The old formula said position x 1000 / 4: 250 ms for position 1, 2,000 for 8.


async def test_eta_waits_for_the_slot_that_frees_kth_soonest():
    clock = SimClock()
    q = measured_queue(clock, slots=3, avg_ms=900)
    first = q.enqueue(I)
    clock.advance(0.6)
    q.enqueue(I)
    clock.advance(0.2)
    q.enqueue(I)
    # Left: 100 ms, 700 ms, 900 ms; the round after adds 900 to each.
    assert [q.eta_ms(p) for p in range(1, 7)] == [100, 700, 900, 1000, 1600, 1800]
    clock.advance(0.3)  # the first has run longer than the average: it may end any moment
    assert q.eta_ms(1) == 0 and first.state is State.ACTIVE


async def test_eta_from_the_configured_estimate_counts_a_whole_generation_per_running_one():
    clock = SimClock()
    q = sim_queue(clock, max_concurrent=2, estimated_ms=5000)
    q.enqueue(I)
    q.enqueue(I)
    clock.advance(1.0)  # nothing measured: 5 s is a guess, not worth subtracting from
    assert [q.eta_ms(p) for p in (1, 2, 3)] == [5000, 5000, 10000]


async def test_eta_with_hosts_uses_the_slots_that_can_serve_the_model():
    config = make_config(
        ollama__hosts=[
            {"url": "http://127.0.0.1:9", "max_concurrent": 2, "models": ["a"]},
            {"url": "http://127.0.0.1:10", "max_concurrent": 1, "models": ["a", "b"]},
        ]
    )
    clock = SimClock()
    q = sim_queue(clock, router=HostPool(host_specs(config)))
    q.remember([600] * 20)
    for _ in range(3):
        q.enqueue(I, model="a")
    # "a" has 3 slots (all running, 600 ms left each), "b" the one on the second host.
    assert (q.capacity("a"), q.capacity("b")) == (3, 1)
    assert [q.eta_ms(p, "a") for p in (1, 3, 4)] == [600, 600, 1200]
    assert [q.eta_ms(p, "b") for p in (1, 2)] == [600, 1200]


# -- the average across a restart -------------------------------------------------------------


async def test_a_restarted_gateway_starts_its_etas_from_the_times_measured_before(
    start_server, sim, tmp_path
):
    state = tmp_path / "queue.json"
    first = await start_server(queue__state_file=str(state))
    s = Streamer(first, {"messages": user("measure me")})
    await s.finish()
    measured = first.gateway.queue.avg_generation_ms
    await first.host.stop()  # a graceful stop writes the file
    assert json.loads(state.read_text())["generation_ms"] == [round(measured, 1)]

    second = await start_server(queue__state_file=str(state))
    running = Streamer(second, slow("running", tokens=40))
    await until(lambda: running.frames)
    waiting = Streamer(second, {"messages": user("waiting")})
    await until(lambda: waiting.queued)
    # Not the 30 s default: at most the one generation measured before the restart.
    assert waiting.queued[0]["estimated_wait_ms"] <= round(measured)
    await running.finish()
    await waiting.finish()


async def test_a_malformed_state_file_is_ignored_and_the_estimate_used(start_server, tmp_path):
    state = tmp_path / "queue.json"
    state.write_text('{"generation_ms": ["fast"]}')
    server = await start_server(queue__state_file=str(state))
    assert server.gateway.queue.avg_generation_ms == 30000
    assert not server.gateway.queue.measured


# -- open files -------------------------------------------------------------------------------


def test_a_hard_open_files_limit_below_what_a_full_queue_needs_is_named_in_a_warning():
    # In a child process: the hard limit cannot be raised back once lowered.
    script = (
        "import logging, resource\n"
        "from server.connections import raise_open_files_limit\n"
        "from tests.conftest import make_config\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))\n"
        "raise_open_files_limit(make_config(queue__max_queue_size=10000))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "open-files limit raised from 256 to 2048" in out.stderr
    warning = next(line for line in out.stderr.splitlines() if "full queue" in line)
    # Both numbers: what it reached, and what the 10,001 streams of a full queue need.
    assert "the open-files limit is 2048 (hard limit 2048)" in warning
    assert "short of the 10513 files" in warning and "10001 streams" in warning
