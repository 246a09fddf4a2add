"""Records left open by a gateway that stopped without ending its calls (killed, crashed).

Place in the flow: at start-up a gateway closes its own open records (it cannot have calls
yet); while it runs, every heartbeat interval it also sweeps the records of OTHER gateways
sharing the store whose heartbeat stopped longer than `[records] heartbeat_timeout_s` ago
(`sweep_lost_calls`). The end reason is `gateway_lost`, and the `call.ended` webhook each
would have sent is put in the outbox after the call's others, so receivers still see every
call end; the webhook senders of the gateways still up deliver it.

Exactly once, however many gateways sweep at the same moment: one transaction per sweep,
an `UPDATE ... WHERE ended_at IS NULL ... RETURNING` that closes the rows, and the outbox
rows of exactly the rows it returned. On PostgreSQL (READ COMMITTED) a second sweeper's
UPDATE waits on the first one's row locks, re-checks `ended_at IS NULL` on the committed
rows and returns none of them; on SQLite the database lock serialises the writers.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.writes import utc_now, webhook_id

log = logging.getLogger("voicebot.records")
LOST = "gateway_lost"


async def close_lost_calls(
    engine: AsyncEngine, urls: list[str], *, gateway: str | None = None,
    heartbeat_before: datetime | None = None, other_than: str | None = None,
) -> list[str]:  # fmt: skip
    """End open records as `gateway_lost` and queue their `call.ended` webhooks for `urls`,
    in one transaction; returns the ids this call closed (none closed twice, see above).

    Which: those of `gateway` (all of them: its own, at its start-up), or with
    `heartbeat_before` those of any gateway (but `other_than`) that has no open record with
    a heartbeat since then: a gateway still beating for one call keeps all its calls (a
    record written late, after a database outage, starts with an old heartbeat)."""
    calls = schema.calls
    where = [calls.c.ended_at.is_(None)]
    if gateway is not None:
        where.append(calls.c.gateway == gateway)
    if other_than is not None:
        where.append(calls.c.gateway != other_than)
    if heartbeat_before is not None:
        alive = calls.alias("alive")
        where.append(calls.c.heartbeat_at < heartbeat_before)
        where.append(~select(literal(1)).where(
            alive.c.gateway == calls.c.gateway, alive.c.ended_at.is_(None),
            alive.c.heartbeat_at >= heartbeat_before,
        ).exists())  # fmt: skip
    now = utc_now()
    stamp = now.isoformat().replace("+00:00", "Z")
    async with engine.begin() as connection:
        closed = (await connection.execute(
            update(calls).where(and_(*where))
            .values(ended_at=now, end_reason=LOST, heartbeat_at=now)
            .returning(calls.c.id, calls.c.gateway, calls.c.variables)
        )).all()  # fmt: skip
        for call_id, _gateway, variables in closed:
            for url in urls:
                last = (await connection.execute(
                    select(func.max(schema.outbox.c.seq))
                    .where(schema.outbox.c.call_id == call_id, schema.outbox.c.url == url)
                )).scalar()  # fmt: skip
                payload: dict[str, Any] = {
                    "type": "call.ended", "timestamp": stamp,
                    "data": {"call_id": call_id, "reason": LOST, "ended_at": stamp,
                             "variables": variables or {}},
                }  # fmt: skip
                await connection.execute(schema.outbox.insert().values(
                    id=webhook_id(), url=url, call_id=call_id, seq=(last or 0) + 1,
                    type="call.ended", payload=payload, created_at=now, next_attempt_at=now,
                    attempts=0, status="pending",
                ))  # fmt: skip
    if closed:
        owners = sorted({row[1] for row in closed})
        log.warning("closed %d call record(s) left open by %s: %s", len(closed),
                    ", ".join(owners), LOST)  # fmt: skip
    return sorted(row[0] for row in closed)


async def sweep_lost_calls(
    engine: AsyncEngine, urls: list[str], *, me: str, heartbeat_before: datetime
) -> list[str]:
    """Close the open records of gateways other than `me` whose heartbeat stopped before
    `heartbeat_before` (their gateway is gone); returns the ids closed by this sweep."""
    return await close_lost_calls(engine, urls, heartbeat_before=heartbeat_before,
                                  other_than=me)  # fmt: skip
