"""The persistent cache tier: answers in a SQLite file, so they outlive the process.

Stdlib `sqlite3`, not `diskcache`: a hit is one indexed SELECT (2.7 µs against diskcache's
6.1 µs on the same table, bench/README.md "Cache tiers"), the values stay JSON (no pickle in a
file other processes may write), and the size bound and TTL are ours to define either way.

Nothing here runs on the event loop: lookups go to one reader thread with its own connection,
writes to a writer thread that drains a bounded queue in batches (one transaction each) and
keeps the file under `[cache].disk_max_size_mb` by deleting the oldest-stored entries first.
WAL mode lets the reader (and other gateways on the same file) read while the writer writes.

The file is a disposable cache, so the tier heals itself rather than waiting for a restart:

- A file found corrupt ("file is not a database", "database disk image is malformed"), when it
  is opened or by any later lookup or write, is moved aside to `<name>.corrupt` (with its -wal
  and -shm; one copy is kept, a later one replaces it: nothing is deleted unsaid) with a warning
  naming both paths and why, and a fresh file takes its place: the tier is up again at once.
- Any other failure (a directory that cannot be made or written, a read-only file, a full disk,
  another process holding the lock too long) marks the tier down with the reason, and the writer
  thread tries again after 1 s, 2 s, 4 s … at most 60 s, by opening the file again and writing
  the batch that failed: the tier is up only once that works, so the state shown (stats,
  /health, /metrics) is what a write would meet now, and it comes back without a restart.

The writer thread owns that cycle (open, heal, retry); a lookup that meets an error only marks
the tier down and wakes it. While down, lookups are skipped (misses) and writes wait in the
queue (past its bound they are dropped and counted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.services.cache import MB, CachedAnswer
from server.services.tiers import FORMAT_VERSION, Tier, TierError, decode, encode

log = logging.getLogger("chatbot.cache")

READ_BUSY_MS = 50
WRITE_BUSY_MS = 5000
QUEUE_SIZE = 1000  # writes waiting for the writer thread; more are dropped (and counted)
BATCH = 200  # writes per transaction
PURGE_EVERY_S = 60.0  # how often expired rows are deleted
RETRY_S = (1.0, 60.0)  # a down tier is tried again after the first, doubling up to the second
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    stored REAL NOT NULL,
    size INTEGER NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_stored ON answers(stored);
"""
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

Identity = tuple[int, int]  # (device, inode): which file a connection has open


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    return conn


def _close(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def _code(exc: BaseException) -> int:
    """SQLite's primary result code of an error (0 when it has none)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _identity(path: Path) -> Identity | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Clear:
    def __init__(self) -> None:
        self.done: concurrent.futures.Future[int] = concurrent.futures.Future()


class _Wake:
    """Queued when the file is found broken, so the writer thread sees to it at once."""


_WAKE = _Wake()
Op = tuple[str, bytes] | _Clear | _Wake | None  # None: stop


@dataclass(frozen=True)
class _Problem:
    why: str
    corrupt: bool
    file: Identity | None  # the file the failing connection had open


class _ReadFailed(Exception):
    def __init__(self, error: sqlite3.Error, file: Identity | None) -> None:
        super().__init__(str(error))
        self.error, self.file = error, file


class SqliteTier(Tier):
    name = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        max_size_mb: int,
        ttl_seconds: float,
        retry_s: tuple[float, float] = RETRY_S,
    ) -> None:
        super().__init__(ttl_seconds)
        self.path = path
        self.max_size_mb = max_size_mb
        self.retry_s = retry_s
        self.size_bytes = 0
        self.moved_aside: Path | None = None  # the corrupt copy this process last kept
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._read_file: Identity | None = None
        self._file: Identity | None = None  # what the writer's connection has open
        self._queue: queue.Queue[Op] = queue.Queue(QUEUE_SIZE)
        self._writer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._problem: _Problem | None = None  # set by whoever meets an error, for the writer
        self._problem_lock = threading.Lock()  # a new problem is never cleared as handled
        self._retry_at: float | None = None  # monotonic time of the next try while down

    # -- lifecycle (the loop awaits; the threads do the I/O) -----------------------------------

    async def start(self) -> None:
        # Made here, not in __init__: a gateway stopped and started again gets fresh threads.
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cache-read")
        self._queue = queue.Queue(QUEUE_SIZE)
        self._stopping = threading.Event()
        self._problem = None
        first: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writer = threading.Thread(
            target=self._run, args=(first,), name="cache-write", daemon=True
        )
        self._writer.start()
        await asyncio.wrap_future(first)  # up, or down with the reason (and retrying)

    async def close(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            await asyncio.get_running_loop().run_in_executor(None, self._stop_writer, writer)
        conn, self._read_conn = self._read_conn, None
        reader, self._reader = self._reader, None
        if reader is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(reader, conn.close)
            reader.shutdown(wait=False)
        self.state, self.reason, self._retry_at = "starting", "", None

    def _stop_writer(self, writer: threading.Thread) -> None:
        # The queued writes go first (a restart keeps them); a stuck file gets 5 s at most. A
        # writer waiting to retry a down tier stops at once (what is queued could not be saved).
        self._stopping.set()
        deadline = time.monotonic() + 5
        while writer.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    log.warning(
                        "the cache writer is stuck; %d writes not saved", self._queue.qsize()
                    )
                    break
        writer.join(max(0.0, deadline - time.monotonic()))

    # -- lookups ----------------------------------------------------------------------------

    async def get(self, key: str) -> CachedAnswer | None:
        reader = self._reader
        if not self.up or reader is None:
            return None
        try:
            row = await asyncio.get_running_loop().run_in_executor(reader, self._read, key)
        except _ReadFailed as failed:
            if _code(failed.error) not in _BUSY:
                self._report(failed.error, failed.file)
                return None
            # Another writer holds the file for a moment: a miss, not a tier down.
            self.counters.errors += 1
            self.counters.misses += 1
            return None
        except RuntimeError:  # the reader thread is shutting down with the gateway
            return None
        answer = decode(row, self.ttl_seconds) if row is not None else None
        if answer is None:
            self.counters.misses += 1
        else:
            self.counters.hits += 1
        return answer

    def _read(self, key: str) -> bytes | None:
        conn = self._read_conn
        if conn is None:
            return None
        try:
            row = conn.execute(
                "SELECT value FROM answers WHERE key = ? AND stored > ?",
                (key, time.time() - self.ttl_seconds),
            ).fetchone()
        except sqlite3.Error as exc:
            raise _ReadFailed(exc, self._read_file) from exc
        return None if row is None else bytes(row[0])

    def _report(self, exc: sqlite3.Error | OSError, file: Identity | None) -> None:
        """An error met on the file: the tier is down until the writer thread has opened it
        again (healing it first when it is corrupt), which this wakes it to do."""
        with self._problem_lock:
            self._problem = _Problem(str(exc), _code(exc) in _CORRUPT, file)
            self._down(f"{self.path}: {exc}")
        with contextlib.suppress(queue.Full):  # a full queue wakes the writer anyway
            self._queue.put_nowait(_WAKE)

    # -- writes -------------------------------------------------------------------------------

    def put(self, key: str, answer: CachedAnswer) -> None:
        # Queued even while down: the writer writes them once the file works again.
        if self._writer is None:
            self.counters.dropped += 1
            return
        try:
            self._queue.put_nowait((key, encode(answer)))
        except queue.Full:
            self.counters.dropped += 1

    async def clear(self) -> int:
        if self._writer is None or not self.up:
            raise TierError(f"down ({self.reason or 'not started'})")
        op = _Clear()
        try:
            self._queue.put(op, timeout=1)
        except queue.Full as exc:
            raise TierError("the writer is busy; try again") from exc
        try:
            return await asyncio.wait_for(asyncio.wrap_future(op.done), 10)
        except TierError:
            raise
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            raise TierError(str(exc) or type(exc).__name__) from exc

    # -- the writer thread: open, heal, write, retry ------------------------------------------

    def _run(self, first: concurrent.futures.Future[None]) -> None:
        conn: sqlite3.Connection | None = None
        held: list[tuple[str, bytes]] = []  # the writes of a batch that failed, tried again
        delay = 0.0  # before the next try to open; grows while tries fail, 0 once a write works
        last_purge = time.monotonic()
        try:
            while True:
                if conn is None:
                    if delay and self._wait(delay):
                        return
                    conn = self._recover(held)
                    if not first.done():
                        first.set_result(None)
                    lo, hi = self.retry_s
                    delay = min(max(2 * delay, lo), hi)
                    if conn is None:
                        continue
                    held = []
                batch = self._next_batch()
                writes = [op for op in batch if isinstance(op, tuple)]
                if self._problem is None and writes and _identity(self.path) != self._file:
                    # Moved away or deleted under us (another gateway healed it, or someone
                    # deleted it to empty the cache): follow the path, as a restart would.
                    self._report(OSError("the file was moved or removed"), None)
                if self._problem is not None:  # a lookup (or the check above) found it broken
                    self._fail_clears(batch, TierError(f"down ({self.reason})"))
                    held += writes
                    _close(conn)
                    conn = None
                elif writes or any(isinstance(op, _Clear) for op in batch):
                    try:
                        self._write_batch(conn, batch)
                        if time.monotonic() - last_purge > PURGE_EVERY_S:
                            last_purge = time.monotonic()
                            conn.execute(
                                "DELETE FROM answers WHERE stored <= ?",
                                (time.time() - self.ttl_seconds,),
                            )
                        self._shrink(conn)
                        self._count(conn)
                        delay = 0.0
                    except (sqlite3.DataError, sqlite3.IntegrityError) as exc:
                        # The batch itself, not the file: dropped, the tier stays up.
                        log.warning("cache writes dropped: %s", exc)
                        self.counters.errors += 1
                        self.counters.dropped += len(writes)
                        self._fail_clears(batch, exc)
                    except sqlite3.Error as exc:
                        self._fail_clears(batch, exc)
                        self._report(exc, self._file)
                        held += writes
                        _close(conn)
                        conn = None
                if None in batch:
                    self.counters.dropped += len(held)
                    return
        finally:
            if not first.done():
                first.set_result(None)
            if conn is not None:
                conn.close()

    def _next_batch(self) -> list[Op]:
        batch = [self._queue.get()]
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _wait(self, delay: float) -> bool:
        """Wait before trying a down tier again; True when the tier is being closed instead."""
        self._retry_at = time.monotonic() + delay
        try:
            return self._stopping.wait(delay)
        finally:
            self._retry_at = None

    @staticmethod
    def _fail_clears(batch: list[Op], exc: Exception) -> None:
        for op in batch:
            if isinstance(op, _Clear) and not op.done.done():
                op.done.set_exception(exc)

    def _recover(self, held: list[tuple[str, bytes]]) -> sqlite3.Connection | None:
        """Open the file (again), moving it aside first when it was found corrupt, and write
        what a failed batch held: the writer's connection with the tier up, or None with the
        tier down and why."""
        problem = self._problem
        self._swap_reader(None, None)  # after any lookup in progress on the old connection
        conn = None
        try:
            # Only the file that failed: another gateway on the same path may have replaced
            # it with a fresh one already.
            if problem and problem.corrupt and problem.file == _identity(self.path):
                self._move_aside(problem.why)
            try:
                conn = self._open()
            except sqlite3.DatabaseError as exc:
                if _code(exc) not in _CORRUPT:
                    raise
                self._move_aside(str(exc))
                conn = self._open()
            if held:
                self._write_batch(conn, held)
                self._count(conn)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                _close(conn)
            self._down(f"{self.path}: {exc}")
            return None
        with self._problem_lock:
            if self._problem is problem:
                self._problem = None
            if self._problem is None:  # else one found meanwhile: the loop opens it again
                self._up()
        return conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, 1000)
        try:
            # Read before anything is written, so a corrupt file is found (and kept) as it was.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == FORMAT_VERSION:
                self._count(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable enough for a cache
            if version not in (0, FORMAT_VERSION):
                log.info("cache file %s has format %s; starting it afresh", self.path, version)
                conn.execute("DROP TABLE IF EXISTS answers")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            if version != FORMAT_VERSION:
                self._count(conn)
            # A write check: a read-only file or directory is found now, not on the first write.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_MS}")
            # Lookups wait on a lock at most this long (a request may be waiting on them); WAL
            # readers only meet one during a checkpoint, and then answer a miss.
            reader = _connect(self.path, READ_BUSY_MS)
        except BaseException:
            conn.close()
            raise
        self._file = _identity(self.path)
        self._swap_reader(reader, self._file)
        return conn

    def _move_aside(self, why: str) -> None:
        """Keep the corrupt file as `<name>.corrupt` (replacing the copy kept before), so a
        fresh one can take its place."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        replaced = aside.exists()
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                # The old copy's -wal must not be read as the new one's (SQLite would).
                Path(f"{aside}{suffix}").unlink(missing_ok=True)
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    os.replace(side, f"{aside}{suffix}")
        except OSError as exc:
            raise OSError(f"{why}; could not move it aside: {exc.strerror or exc}") from exc
        self.moved_aside = aside
        self.counters.errors += 1
        log.warning(
            "cache file %s is corrupt (%s): moved it aside to %s%s; starting a fresh one",
            self.path,
            why,
            aside,
            " (replacing the copy kept there before)" if replaced else "",
        )

    def _swap_reader(self, conn: sqlite3.Connection | None, file: Identity | None) -> None:
        """Give the reader thread its connection (None while the file is being reopened); the
        old one is closed there, after any lookup in progress."""

        def swap() -> None:
            old, self._read_conn, self._read_file = self._read_conn, conn, file
            if old is not None:
                old.close()

        reader = self._reader
        try:
            if reader is None:
                raise RuntimeError("closed")
            reader.submit(swap).result()
        except RuntimeError:  # the tier was closed meanwhile
            if conn is not None:
                conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: Sequence[Op]) -> None:
        cleared: list[tuple[_Clear, int]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                if isinstance(op, _Clear):
                    cleared.append((op, conn.execute("DELETE FROM answers").rowcount))
                elif isinstance(op, tuple):
                    key, value = op
                    conn.execute(
                        "INSERT OR REPLACE INTO answers (key, stored, size, value) "
                        "VALUES (?, ?, ?, ?)",
                        (key, time.time(), len(key) + len(value), value),
                    )
            conn.execute("COMMIT")
            self.counters.writes += sum(isinstance(op, tuple) for op in batch)
            for clear, count in cleared:  # told only once it is committed
                clear.done.set_result(count)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _shrink(self, conn: sqlite3.Connection) -> None:
        """Delete the oldest-stored entries until the rows fit `disk_max_size_mb` (to 90 %,
        so it is not done again on the next write)."""
        limit = self.max_size_mb * MB
        total = conn.execute("SELECT total(size) FROM answers").fetchone()[0]
        if total <= limit:
            return
        excess, doomed = total - limit * 0.9, []
        for key, size in conn.execute("SELECT key, size FROM answers ORDER BY stored"):
            doomed.append((key,))
            excess -= size
            if excess <= 0:
                break
        conn.executemany("DELETE FROM answers WHERE key = ?", doomed)
        log.info("cache file over %d MiB: %d oldest entries dropped", self.max_size_mb, len(doomed))

    def _count(self, conn: sqlite3.Connection) -> None:
        count, total = conn.execute("SELECT count(*), total(size) FROM answers").fetchone()
        self.entries, self.size_bytes = int(count), int(total)

    def extra_stats(self) -> dict[str, Any]:
        retry_at = self._retry_at
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "max_size_mb": self.max_size_mb,
            **({"moved_aside": str(self.moved_aside)} if self.moved_aside else {}),
            **(
                {"retry_in_s": round(max(0.0, retry_at - time.monotonic()), 1)}
                if retry_at is not None and self.state == "down"
                else {}
            ),
        }
