"""Shared records survive a dead gateway (issue 15, shared state): the records another
gateway left open are closed as `gateway_lost` by the gateways still up, exactly once, with
exactly one `call.ended` webhook row per receiver, even when several gateways sweep at the
same moment; and call ids do not collide across gateways.

What each sweep may close runs on a SQLite file (one process) and on a real PostgreSQL
(`database_url`); the race runs on PostgreSQL with two engines (two gateways' pools) whose
UPDATEs are made to wait on one table lock and then released together.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records import schema
from voicebot.calls.records.database import create_engine, open_database
from voicebot.calls.records.lost_calls import LOST, close_lost_calls, sweep_lost_calls
from voicebot.calls.records.service import CallRecords
from voicebot.calls.records.writes import utc_now
from voicebot.config import Settings

URLS = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
TIMEOUT = timedelta(seconds=60)


async def open_call(engine: AsyncEngine, call_id: str, gateway: str, beat_age_s: float) -> None:
    """An open record of `gateway` whose last heartbeat was `beat_age_s` ago, with the
    call.started webhook row (seq 0) a recorder writes first."""
    now = utc_now()
    beat = now - timedelta(seconds=beat_age_s)
    async with engine.begin() as connection:
        await connection.execute(schema.calls.insert().values(
            id=call_id, gateway=gateway, transport="ws", direction="inbound", info={},
            variables={"customer_id": call_id}, started_at=beat, dtmf="", turns=0,
            heartbeat_at=beat,
        ))  # fmt: skip
        for url in URLS:
            await connection.execute(schema.outbox.insert().values(
                id=f"msg_{call_id}_{url[-1]}", url=url, call_id=call_id, seq=0,
                type="call.started", payload={"type": "call.started"}, created_at=now,
                next_attempt_at=now, attempts=0, status="pending",
            ))  # fmt: skip


async def ended_hooks(engine: AsyncEngine) -> dict[str, list[tuple[str, int]]]:
    """call id -> [(url, seq)] of its call.ended outbox rows."""
    async with engine.connect() as connection:
        rows = (await connection.execute(
            select(schema.outbox.c.call_id, schema.outbox.c.url, schema.outbox.c.seq,
                   schema.outbox.c.payload)
            .where(schema.outbox.c.type == "call.ended")
        )).all()  # fmt: skip
    found: dict[str, list[tuple[str, int]]] = {}
    for call_id, url, seq, payload in rows:
        assert payload["data"] == {"call_id": call_id, "reason": LOST,
                                   "ended_at": payload["timestamp"],
                                   "variables": {"customer_id": call_id}}  # fmt: skip
        found.setdefault(call_id, []).append((url, seq))
    return found


async def end_reasons(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as connection:
        return dict((await connection.execute(
            select(schema.calls.c.id, schema.calls.c.end_reason)
        )).all())  # fmt: skip


def test_a_sweep_closes_only_calls_of_gateways_that_stopped_beating(database_url: str) -> None:
    async def main() -> None:
        engine = await open_database(Settings(database_url=database_url).database)
        await open_call(engine, "dead-1", "gw-dead", 120)
        await open_call(engine, "dead-2", "gw-dead", 90)
        await open_call(engine, "me-old", "gw-me", 120)  # the sweeper's own: never swept
        await open_call(engine, "live-1", "gw-live", 5)
        # Written late (after a database outage) with its start as heartbeat, but its
        # gateway still beats for live-1: it keeps the call.
        await open_call(engine, "live-late", "gw-live", 120)
        await open_call(engine, "young", "gw-new", 30)  # not stale yet
        cutoff = utc_now() - TIMEOUT
        assert await sweep_lost_calls(engine, URLS, me="gw-me", heartbeat_before=cutoff) == [
            "dead-1", "dead-2"]
        assert await sweep_lost_calls(engine, URLS, me="gw-me", heartbeat_before=cutoff) == []
        assert await end_reasons(engine) == {
            "dead-1": LOST, "dead-2": LOST, "me-old": None, "live-1": None,
            "live-late": None, "young": None}
        hooks = await ended_hooks(engine)
        assert {k: sorted(v) for k, v in hooks.items()} == {
            "dead-1": [(URLS[0], 1), (URLS[1], 1)], "dead-2": [(URLS[0], 1), (URLS[1], 1)]}
        # The gateway's own records: closed at its start-up, whatever their heartbeat.
        assert await close_lost_calls(engine, URLS, gateway="gw-me") == ["me-old"]
        await engine.dispose()

    asyncio.run(main())


def test_two_gateways_sweeping_at_once_close_each_lost_call_once(postgres_url: str) -> None:
    from tests.postgres import fresh_database

    url = Settings(database_url=fresh_database(postgres_url)).database

    async def main() -> None:
        engine = await open_database(url)
        gateway_a, gateway_b = create_engine(url), create_engine(url)
        lost: set[str] = set()
        for round_ in range(4):
            ids = [f"r{round_}-dead{i}" for i in range(25)]
            for i, call_id in enumerate(ids):
                await open_call(engine, call_id, f"gw-dead{i % 3}", 120)
            lost.update(ids)
            cutoff = utc_now() - TIMEOUT
            # Both sweeps are started while a third connection holds a lock that their
            # UPDATEs need: both have read the table and wait, then run at the same moment.
            async with engine.connect() as holder:
                await holder.execute(text("LOCK TABLE calls IN SHARE MODE"))
                sweeps = [asyncio.create_task(sweep_lost_calls(g, URLS, me=me,
                                                               heartbeat_before=cutoff))
                          for g, me in ((gateway_a, "gw-a"), (gateway_b, "gw-b"))]  # fmt: skip
                for _ in range(200):
                    async with engine.connect() as watcher:
                        waiting = (await watcher.execute(text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type ="
                            " 'Lock' AND query LIKE 'UPDATE calls%'"
                        ))).scalar()  # fmt: skip
                    if waiting == 2:
                        break
                    await asyncio.sleep(0.02)
                assert waiting == 2, "the two sweeps never waited on the lock together"
                await holder.rollback()
            closed_a, closed_b = await asyncio.gather(*sweeps)
            assert not set(closed_a) & set(closed_b), "a call closed by both gateways"
            assert set(closed_a) | set(closed_b) == set(ids)
        reasons = await end_reasons(engine)
        assert {k for k, v in reasons.items() if v == LOST} == lost
        hooks = await ended_hooks(engine)
        assert set(hooks) == lost
        for call_id, rows in hooks.items():  # one call.ended per receiver, after call.started
            assert sorted(rows) == [(URLS[0], 1), (URLS[1], 1)], (call_id, rows)
        async with engine.connect() as connection:
            total = (await connection.execute(select(func.count()).select_from(schema.outbox)))
        assert total.scalar() == len(lost) * len(URLS) * 2
        for e in (engine, gateway_a, gateway_b):
            await e.dispose()

    asyncio.run(main())


def test_the_heartbeat_loop_sweeps_other_gateways_records(tmp_path: object) -> None:
    """CallRecords on SQLite (one process): its periodic heartbeat closes the record of a
    gateway that stopped beating and wakes the webhook sender."""

    async def main() -> None:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/records.db", data_dir=tmp_path,
            gateway_id="gw-me", records={"heartbeat_s": 0.2, "heartbeat_timeout_s": 1.0,
                                         "recording": False},
        )  # fmt: skip
        records = CallRecords(settings)
        await records.start()
        woken: list[int] = []
        records.on_outbox(lambda: woken.append(1))
        assert records.engine is not None
        await open_call(records.engine, "gone", "gw-gone", 0.0)
        await open_call(records.engine, "mine", "gw-me", 5.0)
        for _ in range(50):
            if (await end_reasons(records.engine))["gone"] == LOST:
                break
            await asyncio.sleep(0.1)
        reasons = await end_reasons(records.engine)
        assert reasons == {"gone": LOST, "mine": None}, reasons
        assert woken
        await records.close()

    asyncio.run(main())


def test_the_heartbeat_timeout_must_cover_two_beats() -> None:
    import pytest

    with pytest.raises(ValueError, match="heartbeat_timeout_s"):
        Settings(records={"heartbeat_s": 10, "heartbeat_timeout_s": 15})


_IDS = """
import json, sys
from voicebot.calls.manager import CallManager
manager = object.__new__(CallManager)
print(json.dumps([manager.new_call_id("ws") for _ in range(20000)]))
"""


def test_call_ids_are_unique_across_gateways() -> None:
    """Two gateway processes started together (same clock second, same per-process counter)
    still make different ids: calls/manager.new_call_id adds 32 random bits to each."""
    procs = [subprocess.Popen([sys.executable, "-c", _IDS], stdout=subprocess.PIPE)
             for _ in range(2)]  # fmt: skip
    ids = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(len(set(batch)) == len(batch) for batch in ids)
    assert not set(ids[0]) & set(ids[1])
