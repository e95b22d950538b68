"""The queue with thousands waiting (#19): coalesced position notices, no quadratic work, ETAs in
rounds of slots, and the generation times kept across a restart.

The queue is driven on a simulated clock (its `clock` and `schedule` hooks), so nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import heapq
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

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


# -- coalesced position notices ---------------------------------------------------------------


async def test_a_waiting_entry_hears_at_most_one_position_a_second_while_slots_free_fast():
    clock = SimClock()
    q = sim_queue(clock, max_concurrent=4)
    running = [q.enqueue(I, label=f"r{i}") for i in range(4)]
    waiting = [q.enqueue(I, label=f"w{i}") for i in range(1000)]
    heard = watch(waiting, clock)
    # 400 generations end over 10 simulated seconds: a slot frees every 25 ms.
    for _ in range(400):
        clock.advance(0.025)
        done = next(e for e in running if e.state is State.ACTIVE)
        running.remove(done)
        q.release(done, "completed", 100)
        running.extend(e for e in waiting if e.state is State.ACTIVE and e not in running)
    clock.advance(1.0)  # the last notice
    told = [times for times in heard.values() if times]
    assert len(told) >= 500  # those still waiting moved, and heard of it
    for times in heard.values():
        moves = [t for t, position in times if position > 0]
        gaps = [b - a for a, b in itertools.pairwise(moves)]
        assert all(gap >= 1.0 - 1e-9 for gap in gaps), gaps
        assert len(moves) <= 12  # 10 s of draining, plus the first at once
    # Every slot freed told each of the ~600-1000 behind it before: some 300,000 notices.
    assert q.notices <= 12 * 1000
    # What they heard last is where they are now.
    for e in waiting:
        if e.state is State.WAITING and heard[e.seq]:
            assert heard[e.seq][-1][1] == e.position


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
