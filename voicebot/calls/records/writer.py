"""RecordWriter: record rows from every call, committed in order, off the media path.

Place in the flow: call recorders `put` rows (synchronous, never waits); one task commits
them in batches of up to `records.batch_size` per transaction, in the order they came, and
only then drops them from its queue. If the database is slow or down the rows wait and are
written when it answers again (nothing lost; `voicebot_records_backlog` shows how many
wait). The queue is bounded (`records.queue_size`): past it the event log's rows are shed
(counted in `voicebot_records_dropped_total`); calls, turns and webhooks never are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import groupby

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.database import insert_ignoring_duplicates
from voicebot.calls.records.writes import RecordWrite

log = logging.getLogger("voicebot.records")
COMMIT_EVERY_S = 0.1  # how long a row may wait for the next transaction (plus its own time)

_TABLES = {
    "calls": schema.calls, "turns": schema.turns, "call_events": schema.events,
    "webhook_outbox": schema.outbox,
}  # fmt: skip


class RecordWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        queue_size: int = 100_000,
        batch_size: int = 500,
        on_outbox: Callable[[], None] = lambda: None,
        on_dropped: Callable[[int], None] = lambda n: None,
        on_written: Callable[[int, float], None] = lambda n, seconds: None,
    ) -> None:
        self._engine = engine
        self._queue: deque[RecordWrite] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._on_outbox = on_outbox
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.database_up = True
        self.failures = 0  # transactions that failed since start (retried)
        self._dropped_since_log = 0

    @property
    def backlog(self) -> int:
        """Rows waiting to be committed."""
        return len(self._queue)

    def put(self, write: RecordWrite) -> None:
        """Queue one row; never waits (called from event subscribers on the media path)."""
        if len(self._queue) >= self._queue_size and write.droppable:
            self._on_dropped(1)
            self._dropped_since_log += 1
            if self._dropped_since_log in (1, 1000) or self._dropped_since_log % 100_000 == 0:
                log.error("records queue full (%d rows, database %s): event log rows of call "
                          "%s dropped (%d so far)", len(self._queue),
                          "up" if self.database_up else "down", write.row.get("call_id"),
                          self._dropped_since_log)  # fmt: skip
            return
        self._queue.append(write)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="record-writer")

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is committed; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (up to `timeout`), then stop."""
        self._closing = True
        if not await self.flush(timeout):
            log.error("records: %d row(s) not written at shutdown (database %s)",
                      len(self._queue), "up" if self.database_up else "down")  # fmt: skip
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
            started = time.perf_counter()
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self.database_up:
                    log.error("records: database write failed, %d row(s) wait: %s",
                              len(self._queue), str(exc).splitlines()[0][:300])  # fmt: skip
                self.database_up = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if not self.database_up:
                log.info("records: database back, writing %d waiting row(s)", len(self._queue))
            self.database_up = True
            delay = 0.2
            for _ in batch:
                self._queue.popleft()
            self._on_written(len(batch), time.perf_counter() - started)
            if any(w.table == "webhook_outbox" for w in batch):
                self._on_outbox()
            if len(self._queue) < self._batch_size:
                # Rows of many calls share one transaction: its cost (on the media loop)
                # comes COMMIT_EVERY_S apart at most, not once per event.
                await asyncio.sleep(max(0.0, COMMIT_EVERY_S - (time.perf_counter() - started)))

    async def _commit(self, batch: list[RecordWrite]) -> None:
        async with self._engine.begin() as connection:
            dialect = connection.dialect.name
            # Runs of inserts into one table go as one executemany; order is kept.
            for (table, op), group in groupby(batch, key=lambda w: (w.table, w.op)):
                rows = [w.row for w in group]
                target = _TABLES[table]
                if op == "insert":
                    await connection.execute(insert_ignoring_duplicates(target, dialect), rows)
                else:
                    for row in rows:
                        values = {k: v for k, v in row.items() if k != "id"}
                        await connection.execute(
                            update(target).where(target.c.id == row["id"]).values(**values)
                        )
