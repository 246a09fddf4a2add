"""The webhook outbox's queries: claiming due deliveries under a lease, recording each
attempt's outcome, the backlog figures, and the dead-letter view.

Place in the flow: the call recorder's rows land in `webhook_outbox` (calls/records); the
sender claims them here, posts them, and writes back delivered / failed / dead; the REST API
(`/v1/webhooks/deliveries`) lists them and puts dead ones back. One code path for SQLite and
PostgreSQL (SQLAlchemy Core); every time is written as an aware UTC datetime and read back
through `utc`, because SQLite returns them naive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from voicebot.calls.records import schema
from voicebot.calls.records.times import as_utc, decode_cursor, encode_cursor, iso

Status = Literal["pending", "delivered", "dead"]
ERROR_CHARS = 500

outbox = schema.outbox


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed row: what an attempt needs."""

    id: str
    url: str
    call_id: str
    seq: int
    type: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_pending_at: datetime | None
    dead: int
    next_due_at: datetime | None  # the earliest time a row could be claimed (None: nothing)


def _lease_free(table: Any, now: datetime) -> ColumnElement[bool]:
    return or_(table.c.locked_until.is_(None), table.c.locked_until < now)


def _claimable(table: Any, now: datetime) -> ColumnElement[bool]:
    """Rows that may go next: pending, not leased, and first of their (url, call_id) among
    the pending ones. Dead rows no longer hold their call's later events back."""
    earlier = outbox.alias("earlier")
    blocked = (
        select(literal(1))
        .where(
            earlier.c.url == table.c.url,
            earlier.c.call_id == table.c.call_id,
            earlier.c.seq < table.c.seq,
            earlier.c.status == "pending",
        )
        .exists()
    )
    return and_(table.c.status == "pending", _lease_free(table, now), ~blocked)


async def claim(
    engine: AsyncEngine, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[Delivery]:
    """Lease up to `limit` due rows to `owner` and return them, oldest first.

    One UPDATE takes the leases, its WHERE re-checking each row (pending, lease free, no
    earlier row of its call and URL pending), so two gateways never hold one delivery at
    the same time: on PostgreSQL the rows are picked FOR UPDATE SKIP LOCKED (a concurrent
    claim skips what ours is taking); SQLite runs one writer at a time. A gateway that
    dies holding a lease loses it at `locked_until`, and the row goes to whoever claims
    next."""
    head = outbox.alias("head")
    due = (
        select(head.c.id)
        .where(_claimable(head, now), head.c.next_attempt_at <= now)
        .order_by(head.c.next_attempt_at, head.c.id)
        .limit(limit)
    )
    take = (
        update(outbox)
        .where(_claimable(outbox, now))
        .values(locked_by=owner, locked_until=lease_until)
        .returning(
            outbox.c.id, outbox.c.url, outbox.c.call_id, outbox.c.seq, outbox.c.type,
            outbox.c.payload, outbox.c.created_at, outbox.c.attempts,
        )
    )  # fmt: skip
    if engine.dialect.name == "postgresql":
        # Rows another gateway is claiming right now are skipped, never waited for: two
        # claims cannot wait on each other in a cycle. (Selected first, not as a subquery
        # of the UPDATE: PostgreSQL may re-run such a subquery per row, past its LIMIT.)
        async with engine.begin() as connection:
            ids = (await connection.execute(
                due.with_for_update(of=head, skip_locked=True)
            )).scalars().all()  # fmt: skip
            if not ids:
                return []
            rows = (await connection.execute(take.where(outbox.c.id.in_(ids)))).all()
    else:
        # SQLite: read outside the write transaction (a WAL reader that then writes after
        # another connection's commit fails at once with "database is locked"); the
        # UPDATE's WHERE re-checks each row, so a row claimed meanwhile is not taken.
        async with engine.connect() as connection:
            ids = (await connection.execute(due)).scalars().all()
        if not ids:
            return []
        async with engine.begin() as connection:
            rows = (await connection.execute(take.where(outbox.c.id.in_(ids)))).all()
    claimed = [Delivery(row.id, row.url, row.call_id, row.seq, row.type, row.payload,
                        as_utc(row.created_at), row.attempts) for row in rows]  # fmt: skip
    claimed.sort(key=lambda d: (d.created_at, d.id))
    return claimed


def _mine(delivery_ids: list[str], owner: str) -> ColumnElement[bool]:
    # Only while the row is still ours: if our lease ran out and another gateway took the
    # row, its attempt decides the outcome.
    return and_(outbox.c.id.in_(delivery_ids), outbox.c.locked_by == owner,
                outbox.c.status == "pending")  # fmt: skip


async def delivered(
    engine: AsyncEngine, deliveries: list[Delivery], owner: str, now: datetime
) -> int:
    """Mark these attempts delivered, in one transaction (a sender batches the outcomes of
    a moment: one commit each was most of what webhooks cost the media loop); returns how
    many rows were still ours."""
    if not deliveries:
        return 0
    ids = [delivery.id for delivery in deliveries]
    async with engine.begin() as connection:
        result = await connection.execute(
            update(outbox).where(_mine(ids, owner)).values(
                status="delivered", delivered_at=now, attempts=outbox.c.attempts + 1,
                locked_by=None, locked_until=None,  # last_error kept: how earlier tries failed
            )
        )  # fmt: skip
    return int(result.rowcount or 0)


async def failed(
    engine: AsyncEngine, delivery: Delivery, owner: str, error: str, *,
    next_attempt_at: datetime | None,
) -> bool:  # fmt: skip
    """A failed attempt: retried at `next_attempt_at`, or dead-lettered when it is None."""
    values: dict[str, Any] = {
        "attempts": delivery.attempts + 1, "last_error": error[:ERROR_CHARS],
        "locked_by": None, "locked_until": None,
    }  # fmt: skip
    if next_attempt_at is None:
        values["status"] = "dead"
    else:
        values["next_attempt_at"] = next_attempt_at
    async with engine.begin() as connection:
        result = await connection.execute(update(outbox).where(_mine([delivery.id], owner))
                                          .values(**values))  # fmt: skip
    return bool(result.rowcount)


async def release(engine: AsyncEngine, owner: str, ids: list[str] | None = None) -> int:
    """Give back leases of `owner` (the given rows, or all): at shutdown for attempts cut
    short, and at start-up for the leases a previous run of this gateway died holding (it
    cannot have attempts in flight yet), so they go at once instead of at lease expiry."""
    where = [outbox.c.locked_by == owner, outbox.c.status == "pending"]
    if ids is not None:
        if not ids:
            return 0
        where.append(outbox.c.id.in_(ids))
    async with engine.begin() as connection:
        result = await connection.execute(
            update(outbox).where(*where).values(locked_by=None, locked_until=None)
        )
    return int(result.rowcount or 0)


async def backlog(engine: AsyncEngine, now: datetime) -> Backlog:
    head = outbox.alias("head")
    async with engine.connect() as connection:
        counts = {
            status: (n, oldest)
            for status, n, oldest in (await connection.execute(
                select(outbox.c.status, func.count(), func.min(outbox.c.created_at))
                .where(outbox.c.status.in_(("pending", "dead")))
                .group_by(outbox.c.status)
            )).all()
        }  # fmt: skip
        next_due = None
        if "pending" in counts:
            next_due = (await connection.execute(
                select(func.min(head.c.next_attempt_at)).where(_claimable(head, now))
            )).scalar()  # fmt: skip
    pending, oldest = counts.get("pending", (0, None))
    return Backlog(pending, as_utc(oldest), counts.get("dead", (0, None))[0], as_utc(next_due))


def backoff(attempts: int, base_s: float, max_s: float, jitter: float) -> timedelta:
    """The wait after the `attempts`-th failure: doubling from `base_s`, capped at `max_s`,
    times `jitter` (0.5..1.5) so receivers coming back are not hit by every sender at once."""
    exponent = min(attempts - 1, 60)  # 2**60 s is past any cap; keeps the float finite
    return timedelta(seconds=min(max_s, base_s * 2.0**exponent) * jitter)


# -- the dead-letter view (REST API) -------------------------------------------------------------
def _row_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "url": row.url, "call_id": row.call_id, "seq": row.seq,
        "type": row.type, "attempts": row.attempts, "status": row.status,
        "created_at": iso(row.created_at), "next_attempt_at": iso(row.next_attempt_at),
        "delivered_at": iso(row.delivered_at), "last_error": row.last_error,
    }  # fmt: skip


async def list_deliveries(
    engine: AsyncEngine, *, status: Status | None = None, call_id: str | None = None,
    limit: int = 50, cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:  # fmt: skip
    """Deliveries newest first; returns a page and the cursor of the next (None: last)."""
    columns = [outbox.c[name] for name in (
        "id", "url", "call_id", "seq", "type", "attempts", "status", "created_at",
        "next_attempt_at", "delivered_at", "last_error",
    )]  # fmt: skip
    query = select(*columns)
    if status is not None:
        query = query.where(outbox.c.status == status)
    if call_id is not None:
        query = query.where(outbox.c.call_id == call_id)
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor)
        query = query.where(or_(
            outbox.c.created_at < after_at,
            and_(outbox.c.created_at == after_at, outbox.c.id < after_id),
        ))  # fmt: skip
    query = query.order_by(outbox.c.created_at.desc(), outbox.c.id.desc()).limit(limit + 1)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more and page else None
    return [_row_json(row) for row in page], next_cursor


async def retry(engine: AsyncEngine, delivery_id: str, now: datetime) -> dict[str, Any] | None:
    """Put a dead delivery back in the queue, due now; None if there is no such delivery.

    It keeps its id (a receiver that got it before can tell) and its created_at, so it is
    past `max_age_h` already: it gets one attempt, and if that fails it is dead again (with
    the new error) rather than starting another day of retries nobody asked for. Rows that
    are not dead are left as they are."""
    async with engine.begin() as connection:
        await connection.execute(
            update(outbox).where(outbox.c.id == delivery_id, outbox.c.status == "dead")
            .values(status="pending", next_attempt_at=now, locked_by=None, locked_until=None)
        )  # fmt: skip
        row = (await connection.execute(select(outbox).where(outbox.c.id == delivery_id))).first()
    return None if row is None else _row_json(row)
