"""The read side of the call records: listing, one call with its turns and events, the
transcript, what `DELETE` needs to know.

Place in the flow: the REST API (`gateway/calls_api.py`, DESIGN.md section 4a) calls these
over the records' engine. SQLAlchemy Core, one code path for SQLite and PostgreSQL:
- times: PostgreSQL gives aware datetimes, SQLite naive ones (stored as UTC): both are
  taken as UTC and given out as ISO 8601 with `Z`; filters are bound as aware UTC;
- paging: keyset on (started_at desc, id desc), the cursor the last row's pair in base64url
  (no offsets: a page never repeats or skips a call when new calls start meanwhile);
- text search: `lower(text) LIKE '%...%'` over the turns with the wildcards escaped (both
  databases; SQLite's lower() folds ASCII letters only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.times import as_utc, decode_cursor, encode_cursor, iso

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_URL_SAFE = "/@:!$&'()*+,;=~-._"  # kept as they are in a call's URL path (SIP Call-IDs)


@dataclass(frozen=True)
class CallFilter:
    """`GET /v1/calls` filters; None = any."""

    since: datetime | None = None  # started_at >= since
    until: datetime | None = None  # started_at < until
    transport: str | None = None
    direction: str | None = None
    end_reason: str | None = None
    status: str | None = None  # "live" (not ended) | "ended"
    q: str | None = None  # words in any turn's text, case-insensitive


@dataclass(frozen=True)
class CallState:
    """What `DELETE` and the recording route decide on."""

    id: str
    gateway: str
    ended: bool
    recording_path: str | None


# -- times and cursors --------------------------------------------------------------------------
def recording_url(call_id: str) -> str:
    return f"/v1/calls/{quote(call_id, safe=_URL_SAFE)}/recording"


# -- rows to JSON -------------------------------------------------------------------------------
_SUMMARY_COLUMNS = [
    schema.calls.c[name]
    for name in (
        "id", "gateway", "transport", "direction", "from_uri", "to_uri", "started_at",
        "answered_at", "ended_at", "end_reason", "duration_s", "turns", "dtmf",
        "transfer_target", "summary", "recording_path", "variables",
    )
]  # fmt: skip


def _summary(row: Row[Any]) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"], "gateway": m["gateway"], "transport": m["transport"],
        "direction": m["direction"], "from": m["from_uri"], "to": m["to_uri"],
        "started_at": iso(m["started_at"]), "answered_at": iso(m["answered_at"]),
        "ended_at": iso(m["ended_at"]), "end_reason": m["end_reason"],
        "duration_s": m["duration_s"], "turns": m["turns"], "dtmf": m["dtmf"] or "",
        "transfer_target": m["transfer_target"], "summary": m["summary"],
        "recording": recording_url(m["id"]) if m["recording_path"] else None,
        "variables": m["variables"] or {},
    }  # fmt: skip


def _turn(row: Row[Any]) -> dict[str, Any]:
    m = row._mapping
    return {
        "idx": m["idx"], "speaker": m["speaker"], "text": m["text"], "heard": m["heard"],
        "start_s": m["start_s"], "end_s": m["end_s"], "interrupted": bool(m["interrupted"]),
        "latency": m["latency"],
    }  # fmt: skip


# -- queries ------------------------------------------------------------------------------------
async def list_calls(
    engine: AsyncEngine,
    where: CallFilter = CallFilter(),
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of call summaries, newest first, and the cursor of the next page (None on
    the last). Raises CursorError for a cursor this did not make."""
    calls, turns = schema.calls, schema.turns
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(*_SUMMARY_COLUMNS)
    if where.since is not None:
        query = query.where(calls.c.started_at >= as_utc(where.since))
    if where.until is not None:
        query = query.where(calls.c.started_at < as_utc(where.until))
    for column, value in (("transport", where.transport), ("direction", where.direction),
                          ("end_reason", where.end_reason)):  # fmt: skip
        if value is not None:
            query = query.where(calls.c[column] == value)
    if where.status == "live":
        query = query.where(calls.c.ended_at.is_(None))
    elif where.status == "ended":
        query = query.where(calls.c.ended_at.is_not(None))
    if where.q:
        words = where.q.strip().lower()
        query = query.where(exists().where(
            turns.c.call_id == calls.c.id,
            func.lower(turns.c.text).contains(words, autoescape=True),
        ))  # fmt: skip
    if cursor is not None:
        after, after_id = decode_cursor(cursor)
        query = query.where(or_(
            calls.c.started_at < after,
            and_(calls.c.started_at == after, calls.c.id < after_id),
        ))  # fmt: skip
    query = query.order_by(calls.c.started_at.desc(), calls.c.id.desc()).limit(limit + 1)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        last = rows[-1]._mapping
        next_cursor = encode_cursor(last["started_at"], last["id"])
    return [_summary(row) for row in rows], next_cursor


async def get_call(
    engine: AsyncEngine, call_id: str, *, with_events: bool = True
) -> dict[str, Any] | None:
    """A call's summary with `info`, `turns` (the list in place of the count) and, unless
    `with_events` is False, `events` in order; None if there is no such call."""
    calls, turns, events = schema.calls, schema.turns, schema.events
    async with engine.connect() as connection:
        row = (await connection.execute(
            select(*_SUMMARY_COLUMNS, calls.c.info).where(calls.c.id == call_id)
        )).first()  # fmt: skip
        if row is None:
            return None
        turn_rows = (await connection.execute(
            select(turns).where(turns.c.call_id == call_id).order_by(turns.c.idx)
        )).all()  # fmt: skip
        event_rows = []
        if with_events:
            event_rows = (await connection.execute(
                select(events.c.data).where(events.c.call_id == call_id).order_by(events.c.seq)
            )).scalars().all()  # fmt: skip
    call = _summary(row)
    call["info"] = row._mapping["info"] or {}
    call["turns"] = [_turn(turn) for turn in turn_rows]  # the count becomes the list
    if with_events:
        call["events"] = list(event_rows)
    return call


async def get_turns(engine: AsyncEngine, call_id: str) -> list[dict[str, Any]] | None:
    """A call's turns in order; None if there is no such call."""
    calls, turns = schema.calls, schema.turns
    async with engine.connect() as connection:
        known = (await connection.execute(
            select(calls.c.id).where(calls.c.id == call_id)
        )).first()  # fmt: skip
        if known is None:
            return None
        rows = (await connection.execute(
            select(turns).where(turns.c.call_id == call_id).order_by(turns.c.idx)
        )).all()  # fmt: skip
    return [_turn(row) for row in rows]


async def call_state(engine: AsyncEngine, call_id: str) -> CallState | None:
    calls = schema.calls
    async with engine.connect() as connection:
        row = (await connection.execute(
            select(calls.c.id, calls.c.gateway, calls.c.ended_at, calls.c.recording_path)
            .where(calls.c.id == call_id)
        )).first()  # fmt: skip
    if row is None:
        return None
    return CallState(row.id, row.gateway, row.ended_at is not None, row.recording_path)


# -- the transcript as text ---------------------------------------------------------------------
def _clock(seconds: float | None) -> str:
    tenths = round((seconds or 0.0) * 10)
    minutes, tenths = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    stamp = f"{minutes:02d}:{tenths // 10:02d}.{tenths % 10}"
    return f"{hours}:{stamp}" if hours else stamp


def transcript_text(turns: list[dict[str, Any]]) -> str:
    """`[mm:ss.d] caller: ...` / `[mm:ss.d] bot: ...` lines; a bot line is what the caller
    heard of the reply, marked ` [interrupted]` when a barge-in cut it."""
    lines = []
    for turn in turns:
        if turn["speaker"] == "bot":
            words = turn["heard"]
            if turn["interrupted"]:
                words = f"{words} [interrupted]" if words else "[interrupted]"
            lines.append(f"[{_clock(turn['start_s'])}] bot: {words}")
        else:
            lines.append(f"[{_clock(turn['start_s'])}] caller: {turn['text']}")
    return "".join(line + "\n" for line in lines)
