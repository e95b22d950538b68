"""The queue on its own (stock asyncio): slots, order, priority and aging, ETA, limits."""

from __future__ import annotations

import asyncio

import pytest

from server.errors import QueueFull
from server.services.queue import GenerationQueue, Priority, State

I, B = Priority.INTERACTIVE, Priority.BATCH  # noqa: E741 - reads like the priority classes


async def test_slots_then_positions_in_arrival_order():
    q = GenerationQueue(max_concurrent=2, max_queue_size=10, estimated_ms=1000)
    entries = [q.enqueue(I, label=str(i)) for i in range(5)]
    assert [e.state for e in entries[:2]] == [State.ACTIVE, State.ACTIVE]
    assert [e.position for e in entries] == [0, 0, 1, 2, 3]
    assert (q.active, q.waiting) == (2, 3)

    moved = []
    entries[3].on_change = lambda: moved.append(entries[3].position)
    q.release(entries[0], "completed", 800)
    assert entries[2].state is State.ACTIVE
    assert [e.position for e in entries[2:]] == [0, 1, 2]
    assert moved == [1]  # told when its position moved


async def test_eta_uses_the_estimate_then_the_measured_average():
    q = GenerationQueue(max_concurrent=2, max_queue_size=10, estimated_ms=30000)
    running = [q.enqueue(I), q.enqueue(I)]
    # Positions 1-2 start when the two running end, 3 one round later (ceil(3 / 2) = 2).
    assert q.eta_ms(3) == 2 * 30000
    q.release(running[0], "completed", 1000)
    q.release(running[1], "completed", 3000)
    assert q.avg_generation_ms == 2000
    q.enqueue(I), q.enqueue(I)
    assert 2 * 2000 - 100 < q.eta_ms(3) <= 2 * 2000  # less the time the two have run


async def test_full_line_is_refused_with_retry_after():
    q = GenerationQueue(max_concurrent=1, max_queue_size=1, estimated_ms=4500)
    q.enqueue(I)
    q.enqueue(I)
    with pytest.raises(QueueFull) as info:
        q.enqueue(I)
    assert info.value.status == 503
    assert info.value.headers == {"Retry-After": "5"}
    assert "max_queue_size = 1" in info.value.message
    assert q.stats()["rejected"] == 1


async def test_interactive_goes_before_waiting_batch_work():
    q = GenerationQueue(max_concurrent=1, max_queue_size=10, estimated_ms=60000)
    running = q.enqueue(I)
    bulk = q.enqueue(B)
    chat = q.enqueue(I)
    assert (chat.position, bulk.position) == (1, 2)
    q.release(running, "completed")
    assert chat.state is State.ACTIVE and bulk.position == 1


async def test_batch_work_ages_ahead_of_newer_interactive_work():
    q = GenerationQueue(max_concurrent=1, max_queue_size=10, estimated_ms=10, aging_factor=4)
    running = q.enqueue(I)
    bulk = q.enqueue(B)
    await asyncio.sleep(0.06)  # longer than 4 x 10 ms: the batch entry has aged
    chat = q.enqueue(I)
    assert (bulk.position, chat.position) == (1, 2)
    q.release(running, "completed")
    assert bulk.state is State.ACTIVE


async def test_cancelled_wait_leaves_the_line():
    q = GenerationQueue(max_concurrent=1, max_queue_size=10, estimated_ms=1000)
    q.enqueue(I)
    leaving = q.enqueue(I)
    behind = q.enqueue(I)
    task = asyncio.create_task(q.wait_turn(leaving))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert q.waiting == 1 and behind.position == 1
    assert q.stats()["cancelled"] == 1


async def test_more_slots_at_run_time_start_waiting_work_at_once():
    q = GenerationQueue(max_concurrent=1, max_queue_size=10, estimated_ms=1000)
    entries = [q.enqueue(I) for _ in range(4)]
    q.configure(max_concurrent=3, max_queue_size=10, estimated_ms=1000)
    assert [e.state for e in entries] == [State.ACTIVE] * 3 + [State.WAITING]
    # Fewer slots drop nobody: running ones finish, then the limit holds.
    q.configure(max_concurrent=1, max_queue_size=0, estimated_ms=1000)
    assert (q.active, q.waiting) == (3, 1)
    q.release(entries[0], "completed")
    assert (q.active, q.waiting) == (2, 1)
    with pytest.raises(QueueFull):
        q.enqueue(I)  # a shorter line only turns newcomers away
    q.release(entries[1], "completed")
    q.release(entries[2], "completed")
    assert entries[3].state is State.ACTIVE


async def test_unused_reservations_count_nowhere():
    q = GenerationQueue(max_concurrent=1, max_queue_size=10, estimated_ms=1000)
    q.release(q.enqueue(I), "unused")
    s = q.stats()
    assert (s["completed"], s["cancelled"], s["failed"], s["active"]) == (0, 0, 0, 0)
