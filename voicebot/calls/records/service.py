"""CallRecords: the call-records part of a gateway process, from start-up to shutdown.

Place in the flow: the call manager holds one. At start-up it opens and migrates the
database, closes records a previous run of this gateway left open, and starts the record
writer, the hourly retention purge and the heartbeat of running calls. For each call the
manager gets a `CallRecorder` (subscribed to the call's events) and, with recording on, a
`CallRecording` (the session's audio tap); when the call ends the recording is finished on
its thread and the record closed with its path. The REST API and the webhook sender use
`engine` and `files`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.database import open_database
from voicebot.calls.records.lost_calls import close_lost_calls
from voicebot.calls.records.queries import recording_url
from voicebot.calls.records.recorder import CallRecorder
from voicebot.calls.records.recording import CallRecording, RecordingFiles
from voicebot.calls.records.records_thread import RecordsThread
from voicebot.calls.records.retention import purge
from voicebot.calls.records.writer import RecordWriter
from voicebot.calls.records.writes import utc_now
from voicebot.config import Settings

log = logging.getLogger("voicebot.records")
T = TypeVar("T")
HEARTBEAT_S = 15.0
RETENTION_EVERY_S = 3600.0


class CallRecords:
    def __init__(self, settings: Settings, metrics: Any = None) -> None:
        self.settings = settings
        self.gateway = settings.gateway_name
        self.metrics = metrics
        # The API's engine, on the loop that started the records; the writer, sender and
        # periodic tasks have their own (`_engine`) on the records thread.
        self.engine: AsyncEngine | None = None
        self._engine: AsyncEngine | None = None
        self._thread: RecordsThread | None = None
        self.writer: RecordWriter | None = None
        self.files: RecordingFiles | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()
        self._outbox_listeners: list[Any] = []
        self.recording_bytes = 0  # disk the recordings take, refreshed every minute

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        settings = self.settings
        if settings.records.recording:
            self.files = RecordingFiles(settings.data_dir / "recordings")
        self._thread = RecordsThread()
        try:
            await self._thread.run(self._start_background())
            # The API's reads (and erasures) stay on the calling loop: an engine's
            # connections belong to the loop that made them.
            self.engine = await open_database(settings.database)
        except BaseException:
            await self._stop_thread()
            raise

    async def _start_background(self) -> None:
        settings = self.settings
        self._engine = await open_database(settings.database)
        await close_lost_calls(self._engine, settings.webhooks.urls, gateway=self.gateway)
        m = self.metrics
        self.writer = RecordWriter(
            self._engine, queue_size=settings.records.queue_size,
            batch_size=settings.records.batch_size, on_outbox=self._outbox_written,
            on_dropped=(lambda n: m.records_dropped.inc(n)) if m else (lambda n: None),
            on_written=(lambda n, s: m.records_written.inc(n)) if m else (lambda n, s: None),
        )  # fmt: skip
        self.writer.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat(), name="records-heartbeat")]
        if settings.records.retention_days > 0:
            self._tasks.append(loop.create_task(self._retention(), name="records-retention"))

    async def background(self, work: Callable[[AsyncEngine], Coroutine[Any, Any, T]]) -> T:
        """Run `work(engine)` on the records thread with its engine (the webhook sender is
        started and stopped so: its HTTP and database work stays off the media loop)."""
        assert self._thread is not None and self._engine is not None, "start() first"
        return await self._thread.run(work(self._engine))

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback()` on the records thread soon (e.g. wake the sender), from any
        thread."""
        if self._thread is not None:
            self._thread.call_soon(callback)

    async def close(self) -> None:
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        if self._thread is not None:
            await self._thread.run(self._close_background())
        await self._stop_thread()
        if self.files is not None:
            self.files.close()
        if self.engine is not None:
            await self.engine.dispose()

    async def _close_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.writer is not None:
            await self.writer.close()
        if self._engine is not None:
            await self._engine.dispose()

    async def _stop_thread(self) -> None:
        if self._thread is not None:
            await asyncio.to_thread(self._thread.stop)
            self._thread = None

    def on_outbox(self, listener: Any) -> None:
        """Call `listener()` whenever webhook rows have been committed (wakes a sender), on
        the loop it was registered from."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._outbox_listeners.append((loop, listener))

    def _outbox_written(self) -> None:
        here = asyncio.get_running_loop()
        for loop, listener in self._outbox_listeners:
            if loop is None or loop is here:
                listener()
            else:
                loop.call_soon_threadsafe(listener)

    # -- calls ---------------------------------------------------------------------------------
    def open_call(self, call_id: str, transport: str) -> tuple[CallRecorder, CallRecording | None]:
        """The recorder (and recording, if on) of a call about to start."""
        assert self.writer is not None, "CallRecords.start() first"
        recorder = CallRecorder(
            call_id, transport, self.gateway, self.writer.put, self.settings.webhooks.urls,
            recording_url=recording_url(call_id) if self.files else None,
        )  # fmt: skip
        recording = self.files.open(call_id, recorder.started_at) if self.files else None
        return recorder, recording

    def finish_call(
        self, recorder: CallRecorder, recording: CallRecording | None, reason: str
    ) -> None:
        """Close the call's record once its recording is written (on the writer thread)."""
        if recording is None:
            recorder.finished(reason)
            return

        async def finish() -> None:
            result: Any = None
            try:
                result = await asyncio.wrap_future(recording.finish())
            except Exception as exc:
                log.error("call %s: finishing the recording failed: %s", recorder.call_id, exc)
            recorder.finished(reason, result)

        task = asyncio.get_running_loop().create_task(finish())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every call that ended has its record committed (tests, shutdown)."""
        if self._finishing:
            await asyncio.gather(*list(self._finishing), return_exceptions=True)
        return self.writer is not None and await self.writer.flush(timeout)  # polls: any loop

    def status(self) -> dict[str, object]:
        writer = self.writer
        return {
            "database": "up" if writer is None or writer.database_up else "down",
            "backlog": 0 if writer is None else writer.backlog,
            "recording_bytes": self.recording_bytes if self.files is not None else None,
        }

    # -- periodic ------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        calls = schema.calls
        beats = 0
        while True:
            if self.files is not None and beats % 4 == 0:
                try:
                    self.recording_bytes = await asyncio.to_thread(self.files.disk_bytes)
                except OSError as exc:
                    log.warning("recordings disk use not read: %s", exc)
            beats += 1
            await asyncio.sleep(HEARTBEAT_S)
            assert self._engine is not None
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(
                        update(calls).where(calls.c.gateway == self.gateway,
                                            calls.c.ended_at.is_(None))
                        .values(heartbeat_at=utc_now())
                    )  # fmt: skip
            except Exception as exc:
                log.warning("records heartbeat failed: %s", str(exc).splitlines()[0][:200])

    async def _retention(self) -> None:
        days = self.settings.records.retention_days
        while True:
            assert self._engine is not None
            try:
                await purge(self._engine, self.files, utc_now() - timedelta(days=days))
            except Exception as exc:
                log.warning("retention purge failed: %s", str(exc).splitlines()[0][:200])
            await asyncio.sleep(RETENTION_EVERY_S)
