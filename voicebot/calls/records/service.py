"""CallRecords: the call-records part of a gateway process, from start-up to shutdown.

Place in the flow: the call manager holds one. At start-up it opens and migrates the
database, closes records a previous run of this gateway left open, and starts the record
writer, the hourly retention purge and the heartbeat of running calls (which also closes the
records of other gateways that stopped beating: `gateway_lost`). For each call the
manager gets a `CallRecorder` (subscribed to the call's events) and, with recording on, a
`CallRecording` (the session's audio tap); when the call ends the recording is finished on
its thread and the record closed with its path. The REST API and the webhook sender use
`engine` and `files`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.database import open_database
from voicebot.calls.records.lost_calls import close_lost_calls, sweep_lost_calls
from voicebot.calls.records.queries import recording_url
from voicebot.calls.records.recorder import CallRecorder, stale_before
from voicebot.calls.records.recording import CallRecording, RecordingFiles
from voicebot.calls.records.retention import purge
from voicebot.calls.records.writer import RecordWriter
from voicebot.calls.records.writes import utc_now
from voicebot.config import Settings

log = logging.getLogger("voicebot.records")
DISK_EVERY_S = 60.0  # how often the recordings' disk use is read
RETENTION_EVERY_S = 3600.0


class CallRecords:
    def __init__(self, settings: Settings, metrics: Any = None) -> None:
        self.settings = settings
        self.gateway = settings.gateway_name
        self.metrics = metrics
        self.engine: AsyncEngine | None = None
        self.writer: RecordWriter | None = None
        self.files: RecordingFiles | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()
        self._outbox_listeners: list[Any] = []
        self.recording_bytes = 0  # disk the recordings take, refreshed every minute

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        settings = self.settings
        self.engine = await open_database(settings.database)
        await close_lost_calls(self.engine, settings.webhooks.urls, gateway=self.gateway)
        if settings.records.recording:
            self.files = RecordingFiles(settings.data_dir / "recordings")
        m = self.metrics
        self.writer = RecordWriter(
            self.engine, queue_size=settings.records.queue_size,
            batch_size=settings.records.batch_size, on_outbox=self._outbox_written,
            on_dropped=(lambda n: m.records_dropped.inc(n)) if m else (lambda n: None),
            on_written=(lambda n, s: m.records_written.inc(n)) if m else (lambda n, s: None),
        )  # fmt: skip
        self.writer.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat(), name="records-heartbeat")]
        if settings.records.retention_days > 0:
            self._tasks.append(loop.create_task(self._retention(), name="records-retention"))

    async def close(self) -> None:
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.writer is not None:
            await self.writer.close()
        if self.files is not None:
            self.files.close()
        if self.engine is not None:
            await self.engine.dispose()

    def on_outbox(self, listener: Any) -> None:
        """Call `listener()` whenever webhook rows have been committed (wakes the sender)."""
        self._outbox_listeners.append(listener)

    def _outbox_written(self) -> None:
        for listener in self._outbox_listeners:
            listener()

    # -- calls ---------------------------------------------------------------------------------
    def open_call(
        self, call_id: str, transport: str, *, direction: str = "inbound",
        extra_webhook_urls: list[str] | None = None, recording: bool = True,
    ) -> tuple[CallRecorder, CallRecording | None]:  # fmt: skip
        """The recorder (and recording, if on and `recording`) of a call about to start;
        `extra_webhook_urls` get this call's webhooks besides the configured receivers."""
        assert self.writer is not None, "CallRecords.start() first"
        urls = [*self.settings.webhooks.urls,
                *(u for u in extra_webhook_urls or [] if u not in self.settings.webhooks.urls)]
        recorder = CallRecorder(
            call_id, transport, self.gateway, self.writer.put, urls, direction=direction,
            recording_url=recording_url(call_id) if self.files else None,
        )  # fmt: skip
        return recorder, self.open_recording(recorder) if recording else None

    def open_recording(self, recorder: CallRecorder) -> CallRecording | None:
        """The call's recording file, if recordings are on (an outbound call: on answer)."""
        return self.files.open(recorder.call_id, recorder.started_at) if self.files else None

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
        return self.writer is not None and await self.writer.flush(timeout)

    def status(self) -> dict[str, object]:
        writer = self.writer
        return {
            "database": "up" if writer is None or writer.database_up else "down",
            "backlog": 0 if writer is None else writer.backlog,
            "recording_bytes": self.recording_bytes if self.files is not None else None,
        }

    # -- periodic ------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Every `[records] heartbeat_s` (+-20 % jitter, so gateways started together do not
        sweep in step): mark this gateway's open records alive, then close those of gateways
        whose heartbeat stopped `heartbeat_timeout_s` ago (lost_calls.sweep_lost_calls)."""
        calls = schema.calls
        records = self.settings.records
        disk_read_at = -DISK_EVERY_S
        loop = asyncio.get_running_loop()
        # The first beat runs at once, before any call: SQLAlchemy compiles each statement
        # on the event loop the first time it runs (~10 ms for the sweep's), which at the
        # first beat with calls up made every call's media ticks late at that moment.
        first = True
        while True:
            if self.files is not None and loop.time() - disk_read_at >= DISK_EVERY_S:
                disk_read_at = loop.time()
                try:
                    self.recording_bytes = await asyncio.to_thread(self.files.disk_bytes)
                except OSError as exc:
                    log.warning("recordings disk use not read: %s", exc)
            if not first:
                await asyncio.sleep(records.heartbeat_s * random.uniform(0.8, 1.2))
            first = False
            assert self.engine is not None
            try:
                async with self.engine.begin() as connection:
                    await connection.execute(
                        update(calls).where(calls.c.gateway == self.gateway,
                                            calls.c.ended_at.is_(None))
                        .values(heartbeat_at=utc_now())
                    )  # fmt: skip
            except Exception as exc:
                log.warning("records heartbeat failed: %s", str(exc).splitlines()[0][:200])
                continue
            await self.sweep()

    async def sweep(self) -> list[str]:
        """Close the records other gateways left open when they died (`gateway_lost`, with
        their `call.ended` webhooks, which this gateway's sender then delivers)."""
        assert self.engine is not None
        try:
            closed = await sweep_lost_calls(
                self.engine, self.settings.webhooks.urls, me=self.gateway,
                heartbeat_before=stale_before(self.settings.records.heartbeat_timeout_s),
            )  # fmt: skip
        except Exception as exc:
            log.warning("lost-calls sweep failed: %s", str(exc).splitlines()[0][:200])
            return []
        if closed:
            self._outbox_written()
        return closed

    async def _retention(self) -> None:
        days = self.settings.records.retention_days
        while True:
            assert self.engine is not None
            try:
                await purge(self.engine, self.files, utc_now() - timedelta(days=days))
            except Exception as exc:
                log.warning("retention purge failed: %s", str(exc).splitlines()[0][:200])
            await asyncio.sleep(RETENTION_EVERY_S)
