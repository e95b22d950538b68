"""The persistent cache tier: answers in a SQLite file, so they outlive the process.

Stdlib `sqlite3`, not `diskcache`: a hit is one indexed SELECT (2.7 µs against diskcache's
6.1 µs on the same table, bench/README.md "Cache tiers"), the values stay JSON (no pickle in a
file other processes may write), and the size bound and TTL are ours to define either way.

Nothing here runs on the event loop: lookups go to one reader thread with its own connection,
writes to a writer thread that drains a bounded queue in batches (one transaction each) and
keeps the file under `[cache].disk_max_size_mb` by deleting the oldest-stored entries first.
WAL mode lets the reader (and other gateways on the same file) read while the writer writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from server.services.cache import MB, CachedAnswer
from server.services.tiers import FORMAT_VERSION, Tier, TierError, decode, encode

log = logging.getLogger("chatbot.cache")

READ_BUSY_MS = 50
QUEUE_SIZE = 1000  # writes waiting for the writer thread; more are dropped (and counted)
BATCH = 200  # writes per transaction
PURGE_EVERY_S = 60.0  # how often expired rows are deleted
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    stored REAL NOT NULL,
    size INTEGER NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_stored ON answers(stored);
"""


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    return conn


class _Clear:
    def __init__(self) -> None:
        self.done: concurrent.futures.Future[int] = concurrent.futures.Future()


class SqliteTier(Tier):
    name = "sqlite"

    def __init__(self, path: Path, *, max_size_mb: int, ttl_seconds: float) -> None:
        super().__init__(ttl_seconds)
        self.path = path
        self.max_size_mb = max_size_mb
        self.size_bytes = 0
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._queue: queue.Queue[tuple[str, bytes] | _Clear | None] = queue.Queue(QUEUE_SIZE)
        self._writer: threading.Thread | None = None

    # -- lifecycle (the loop awaits; the threads do the I/O) -----------------------------------

    async def start(self) -> None:
        # Made here, not in __init__: a gateway stopped and started again gets fresh threads.
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cache-read")
        self._queue = queue.Queue(QUEUE_SIZE)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._reader, self._open)
        except (sqlite3.Error, OSError) as exc:
            self._down(f"{self.path}: {exc}")
            return
        self._up()
        self._writer = threading.Thread(target=self._write_loop, name="cache-write", daemon=True)
        self._writer.start()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, 1000)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable enough for a cache
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, FORMAT_VERSION):
                log.info("cache file %s has format %s; starting it afresh", self.path, version)
                conn.execute("DROP TABLE IF EXISTS answers")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            self._count(conn)
            # Lookups wait on a lock at most this long (a request may be waiting on them); WAL
            # readers only meet one during a checkpoint, and then answer a miss.
            conn.execute(f"PRAGMA busy_timeout = {READ_BUSY_MS}")
            # A write check: a read-only file or directory is found now, not on the first write.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except BaseException:
            conn.close()
            raise
        self._read_conn = conn

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
        self.state, self.reason = "starting", ""

    def _stop_writer(self, writer: threading.Thread) -> None:
        # The queued writes go first (a restart keeps them); a stuck file gets 5 s at most.
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            log.warning("the cache writer is stuck; %d writes not saved", self._queue.qsize())
        writer.join(5)

    # -- lookups ----------------------------------------------------------------------------

    async def get(self, key: str) -> CachedAnswer | None:
        reader = self._reader
        if not self.up or reader is None:
            return None
        try:
            row = await asyncio.get_running_loop().run_in_executor(reader, self._read, key)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                self._down(f"{self.path}: {exc}")
                return None
            # Another writer holds the file for a moment: a miss, not a tier down.
            self.counters.errors += 1
            self.counters.misses += 1
            return None
        except sqlite3.Error as exc:
            self._down(f"{self.path}: {exc}")
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
        row = conn.execute(
            "SELECT value FROM answers WHERE key = ? AND stored > ?",
            (key, time.time() - self.ttl_seconds),
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- writes (the writer thread) -----------------------------------------------------------

    def put(self, key: str, answer: CachedAnswer) -> None:
        # Queued even while down after a failed write: the next write that works (the disk
        # has room again) brings the tier back up.
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
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            raise TierError(str(exc) or type(exc).__name__) from exc

    def _write_loop(self) -> None:
        try:
            conn = _connect(self.path, 5000)
        except sqlite3.Error as exc:
            self._down(f"{self.path}: {exc}")
            return
        last_purge = time.monotonic()
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = None in batch
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
                except sqlite3.Error as exc:
                    self._down(f"{self.path}: {exc}")
                    self.counters.dropped += sum(isinstance(op, tuple) for op in batch)
                    for op in batch:
                        if isinstance(op, _Clear) and not op.done.done():
                            op.done.set_exception(exc)
                if stop:
                    return
        finally:
            conn.close()

    def _write_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[str, bytes] | _Clear | None]
    ) -> None:
        cleared: list[tuple[_Clear, int]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                if isinstance(op, _Clear):
                    cleared.append((op, conn.execute("DELETE FROM answers").rowcount))
                elif op is not None:
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
        if self.state == "down":  # a write went through again (e.g. the disk has room now)
            self._up()

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
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "max_size_mb": self.max_size_mb,
        }
