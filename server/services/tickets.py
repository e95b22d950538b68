"""Tickets: every chat request's id, its status, place in line and ETA, and its cancellation.

A ticket comes either from `POST /api/chat-queue` (then it takes its place in line at once and
a chat request with the same `request_id` claims it within `ticket_ttl_seconds`), or is opened
by the chat request itself. Either way `GET`/`DELETE /api/chat-queue?requestId=` can see and
cancel it. Finished tickets stay visible for `ticket_ttl_seconds`, then are forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from server.errors import Conflict
from server.services.generation import Generation
from server.services.queue import GenerationQueue, Priority, QueueEntry, State

log = logging.getLogger("chatbot.queue")


@dataclass(eq=False)
class Ticket:
    request_id: str
    priority: Priority
    # Before a claim: the place in line reserved by POST /api/chat-queue.
    reservation: QueueEntry | None = None
    # After a claim: the generation the request listens to (maybe shared with others).
    generation: Generation | None = None
    claimed: bool = False
    # Issued by POST /api/chat-queue: its client polls it, so it stays visible once finished.
    issued: bool = False
    cancelled: bool = False
    final: str | None = None
    owner: str = "anonymous"  # who may see and cancel it (an API key's name)
    _timer: asyncio.TimerHandle | None = None

    @property
    def entry(self) -> QueueEntry | None:
        if self.generation is not None:
            return self.generation.entry
        return self.reservation

    @property
    def status(self) -> str:
        if self.final is not None:
            return self.final
        if self.cancelled:
            return "cancelled"  # its listener is stopping the generation right now
        entry = self.entry
        if entry is None or entry.state is State.WAITING:
            return "queued"
        return "processing"

    @property
    def position(self) -> int:
        entry = self.entry
        return entry.position if self.final is None and entry is not None else 0


class TicketBook:
    def __init__(self, queue: GenerationQueue, ttl_seconds: float) -> None:
        self.queue = queue
        self.ttl_seconds = ttl_seconds
        self._tickets: dict[str, Ticket] = {}

    def get(self, request_id: str) -> Ticket | None:
        return self._tickets.get(request_id)

    def issue(
        self,
        request_id: str,
        priority: Priority = Priority.INTERACTIVE,
        *,
        owner: str = "anonymous",
        max_waiting: int = 0,
    ) -> Ticket:
        """A ticket with a place in line, to be claimed by a chat request (POST /api/chat-queue)."""
        self._check_free(request_id)
        # May raise QueueFull, or TooManyRequests for the owner's own limit.
        entry = self.queue.enqueue(priority, label=request_id, owner=owner, max_waiting=max_waiting)
        ticket = Ticket(request_id, priority, reservation=entry, issued=True, owner=owner)
        self._tickets[request_id] = ticket
        ticket._timer = asyncio.get_running_loop().call_later(
            self.ttl_seconds, self._expire, ticket
        )
        return ticket

    def open(self, request_id: str, priority: Priority, owner: str = "anonymous") -> Ticket:
        """The ticket of a chat request: the one issued for its id (to the same owner), or a
        new one."""
        ticket = self._tickets.get(request_id)
        if (
            ticket is not None
            and not ticket.claimed
            and ticket.final is None
            and ticket.owner == owner
        ):
            ticket.claimed = True
            if ticket._timer is not None:
                ticket._timer.cancel()
            return ticket
        self._check_free(request_id)
        ticket = Ticket(request_id, priority, claimed=True, owner=owner)
        self._tickets[request_id] = ticket
        return ticket

    def take_reservation(self, ticket: Ticket) -> QueueEntry | None:
        entry, ticket.reservation = ticket.reservation, None
        return entry

    def drop_reservation(self, ticket: Ticket) -> None:
        """The claim needs no generation of its own (a cache hit, or it joined one)."""
        entry = self.take_reservation(ticket)
        if entry is not None:
            self.queue.release(entry, "unused")

    def finish(self, ticket: Ticket, status: str) -> None:
        if ticket.final is not None:
            return
        ticket.final = status
        self.drop_reservation(ticket)
        # The answer lives on in the cache if anywhere; a finished ticket must not keep the
        # generation (and every piece of its text) alive.
        ticket.generation = None
        if ticket._timer is not None:
            ticket._timer.cancel()
            ticket._timer = None
        if not (ticket.issued or ticket.cancelled):
            # A plain chat request that nobody asked about through /api/chat-queue: visible
            # while in progress, forgotten when done. Keeping
            # every finished request for ticket_ttl_seconds cost ~600 B each at thousands of
            # cache hits a second (bench/README.md, "Cache hit").
            self._forget(ticket)
            return
        # A ticket the client handles through /api/chat-queue stays visible to GET for a
        # while, then is forgotten.
        ticket._timer = asyncio.get_running_loop().call_later(
            self.ttl_seconds, self._forget, ticket
        )

    def forget(self, ticket: Ticket) -> None:
        """Drop a ticket that never became a request (e.g. refused with 503)."""
        self._forget(ticket)

    def abandon(self, ticket: Ticket, reason: str) -> None:
        """A claimed ticket whose request failed before it became a generation: its place in
        line goes to the next, and a client polling it through /api/chat-queue sees it failed
        (a plain request's ticket is forgotten)."""
        entry = self.take_reservation(ticket)
        if entry is not None:
            self.queue.release(entry, "cancelled")
        if ticket.issued:
            self.finish(ticket, "failed")
            log.info("request %s failed before it started (%s)", ticket.request_id, reason)
        else:
            self._forget(ticket)

    def cancel(self, ticket: Ticket) -> None:
        """DELETE: leave the line, or stop listening (the generation stops with its last
        listener, which closes the upstream request)."""
        if ticket.final is not None:
            return
        ticket.cancelled = True
        if ticket.generation is not None:
            ticket.generation.signal.fire()  # wakes the listener, which raises Cancelled
        else:
            self._release_reservation(ticket, "cancelled")

    def _check_free(self, request_id: str) -> None:
        old = self._tickets.get(request_id)
        if old is not None and old.final is None:
            raise Conflict(f"request_id {request_id!r} is already in use by a request in progress")

    def _expire(self, ticket: Ticket) -> None:
        if not ticket.claimed and ticket.final is None:
            log.info("ticket %s expired unclaimed after %g s", ticket.request_id, self.ttl_seconds)
            self._release_reservation(ticket, "expired")

    def _release_reservation(self, ticket: Ticket, status: str) -> None:
        entry = self.take_reservation(ticket)
        if entry is not None:
            self.queue.release(entry, "cancelled")  # its place (or held slot) goes to the next
        self.finish(ticket, status)

    def _forget(self, ticket: Ticket) -> None:
        if ticket._timer is not None:
            ticket._timer.cancel()
        if self._tickets.get(ticket.request_id) is ticket:
            del self._tickets[ticket.request_id]
