"""Records left open by a gateway that stopped without ending its calls (killed, crashed).

Place in the flow: at start-up a gateway closes its own open records (it cannot have calls
yet); the end reason is `gateway_lost`, and the `call.ended` webhook each would have sent is
put in the outbox after the call's others, so receivers still see every call end.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.writes import utc_now, webhook_id

log = logging.getLogger("voicebot.records")
LOST = "gateway_lost"


async def close_lost_calls(
    engine: AsyncEngine, urls: list[str], *, gateway: str | None = None,
    heartbeat_before: datetime | None = None,
) -> list[str]:  # fmt: skip
    """End open records of `gateway` (all of them) or, with `heartbeat_before`, those of
    any gateway whose heartbeat stopped before then; returns their ids."""
    calls = schema.calls
    where = [calls.c.ended_at.is_(None)]
    if gateway is not None:
        where.append(calls.c.gateway == gateway)
    if heartbeat_before is not None:
        where.append(calls.c.heartbeat_at < heartbeat_before)
    now = utc_now()
    async with engine.begin() as connection:
        rows = (await connection.execute(
            select(calls.c.id, calls.c.variables).where(and_(*where))
        )).all()  # fmt: skip
        for call_id, variables in rows:
            await connection.execute(
                update(calls).where(calls.c.id == call_id, calls.c.ended_at.is_(None))
                .values(ended_at=now, end_reason=LOST, heartbeat_at=now)
            )  # fmt: skip
            for url in urls:
                last = (await connection.execute(
                    select(func.max(schema.outbox.c.seq))
                    .where(schema.outbox.c.call_id == call_id, schema.outbox.c.url == url)
                )).scalar()  # fmt: skip
                payload: dict[str, Any] = {
                    "type": "call.ended", "timestamp": now.isoformat().replace("+00:00", "Z"),
                    "data": {"call_id": call_id, "reason": LOST,
                             "ended_at": now.isoformat().replace("+00:00", "Z"),
                             "variables": variables or {}},
                }  # fmt: skip
                await connection.execute(schema.outbox.insert().values(
                    id=webhook_id(), url=url, call_id=call_id, seq=(last or 0) + 1,
                    type="call.ended", payload=payload, created_at=now, next_attempt_at=now,
                    attempts=0, status="pending",
                ))  # fmt: skip
    if rows:
        log.warning("closed %d call record(s) left open by %s: %s", len(rows),
                    gateway or "gateways that stopped", LOST)  # fmt: skip
    return [row[0] for row in rows]
