"""Retention: records, recordings and finished webhook deliveries older than
`records.retention_days` are erased.

Place in the flow: the call-records service runs `purge` hourly; erasing one call on request
(`DELETE /v1/calls/{id}`) uses `erase_call`, the same steps for a single id.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.recording import RecordingFiles

log = logging.getLogger("voicebot.records")


async def erase_call(engine: AsyncEngine, files: RecordingFiles | None, call_id: str) -> bool:
    """Erase one call: record, turns, events, its webhooks not yet sent, the recording.
    False if there was no such call."""
    calls = schema.calls
    # Read first, then write in a transaction of its own: a SQLite (WAL) transaction that
    # reads and then writes after another connection's commit fails at once.
    async with engine.connect() as connection:
        name = (await connection.execute(
            select(calls.c.recording_path).where(calls.c.id == call_id)
        )).first()  # fmt: skip
    if name is None:
        return False
    async with engine.begin() as connection:
        # Explicit, not only ON DELETE CASCADE: SQLite files made without foreign keys on.
        await connection.execute(delete(schema.turns).where(schema.turns.c.call_id == call_id))
        await connection.execute(delete(schema.events).where(schema.events.c.call_id == call_id))
        await connection.execute(delete(schema.outbox).where(schema.outbox.c.call_id == call_id))
        await connection.execute(delete(calls).where(calls.c.id == call_id))
    if files is not None and name[0]:
        files.delete(name[0])
    return True


async def purge(engine: AsyncEngine, files: RecordingFiles | None, before: datetime) -> int:
    """Erase calls ended before `before` and deliveries finished before it; returns calls."""
    calls = schema.calls
    async with engine.connect() as connection:
        old = (await connection.execute(
            select(calls.c.id).where(calls.c.ended_at.is_not(None), calls.c.ended_at < before)
        )).scalars().all()  # fmt: skip
    for call_id in old:
        await erase_call(engine, files, call_id)
    async with engine.begin() as connection:
        await connection.execute(delete(schema.outbox).where(
            schema.outbox.c.status != "pending", schema.outbox.c.created_at < before
        ))  # fmt: skip
    if old:
        log.info("retention: erased %d call(s) ended before %s", len(old), before.isoformat())
    return len(old)
