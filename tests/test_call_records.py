"""Call records (calls/records): events become records, turns and webhook rows; the writer
keeps them through a database outage; recordings put both sides on one timeline.

The writer and database tests run on a SQLite file and on a real PostgreSQL server
(`database_url`); the outage test stops and restarts a PostgreSQL server of its own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from tests.postgres import postgres_server
from voicebot.agent.events import (
    AgentState,
    BotText,
    CallEnded,
    CallStarted,
    CallTransferred,
    DtmfPressed,
    Interrupted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TranscriptReady,
    TurnLatency,
    VadLevel,
)
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.audio.wav import read_wav
from voicebot.calls.records import schema
from voicebot.calls.records.database import open_database
from voicebot.calls.records.lost_calls import close_lost_calls
from voicebot.calls.records.recorder import CallRecorder
from voicebot.calls.records.recording import RecordingFiles
from voicebot.calls.records.retention import erase_call
from voicebot.calls.records.writer import RecordWriter
from voicebot.calls.records.writes import RecordWrite
from voicebot.config import Settings

URLS = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]


def a_call(recorder: CallRecorder) -> None:
    """Greeting, a question answered, a barge-in, DTMF, a transfer, the end."""
    cid = recorder.call_id
    recorder.opened({"from": "<sip:alice@example.com>;tag=1", "to": "<sip:bot@example.com>"})
    for event in [
        CallStarted(call_id=cid, t=0.0, info={}),
        StateChanged(call_id=cid, t=0.0, state=AgentState.WAITING_FOR_SPEECH),
        VadLevel(call_id=cid, t=0.1, probability=0.2),
        SpeechStarted(call_id=cid, t=0.7, onset=0.5),
        StateChanged(call_id=cid, t=0.7, state=AgentState.LISTENING),
        SpeechEnded(call_id=cid, t=2.5, duration=1.8),
        StateChanged(call_id=cid, t=2.5, state=AgentState.THINKING),
        TranscriptReady(call_id=cid, t=2.6, text=" What are your hours? "),
        StateChanged(call_id=cid, t=2.9, state=AgentState.SPEAKING),
        TurnLatency(call_id=cid, t=2.9, speculative=False, vad_speech_end=2.2, speech_end=2.5,
                    first_audio_sent=2.9, total_ms=400.0),
        BotText(call_id=cid, t=2.9, text="We open at nine."),
        BotText(call_id=cid, t=4.0, text="We close at five on weekdays."),
        SpeechStarted(call_id=cid, t=4.6, onset=4.5),
        Interrupted(call_id=cid, t=4.6, latency_ms=30.0, heard="We open at nine. We close"),
        StateChanged(call_id=cid, t=4.6, state=AgentState.INTERRUPTED),
        StateChanged(call_id=cid, t=4.6, state=AgentState.LISTENING),
        SpeechEnded(call_id=cid, t=6.0, duration=1.5),
        TranscriptReady(call_id=cid, t=6.1, text="An agent please"),
        DtmfPressed(call_id=cid, t=6.5, digit="4"),
        DtmfPressed(call_id=cid, t=6.8, digit="#"),
        BotText(call_id=cid, t=7.0, text="Transferring you."),
        StateChanged(call_id=cid, t=8.0, state=AgentState.WAITING_FOR_SPEECH),
        CallTransferred(call_id=cid, t=8.1, target="sip:agent@example.com"),
        CallEnded(call_id=cid, t=8.1, reason="transferred"),
    ]:  # fmt: skip
        recorder(event)
    recorder.finished(recorder.end_reason or "error", ("2026/x.wav", 1044))


def test_recorder_builds_the_record_turns_events_and_webhooks() -> None:
    rows: list[RecordWrite] = []
    recorder = CallRecorder("sip-1", "sip", "gw1", rows.append, URLS)
    a_call(recorder)
    by_table: dict[str, list[RecordWrite]] = {}
    for write in rows:
        by_table.setdefault(write.table, []).append(write)
    insert = by_table["calls"][0]
    assert insert.op == "insert" and insert.row["from_uri"].startswith("<sip:alice")
    final = by_table["calls"][-1].row
    assert final["end_reason"] == "transferred" and final["dtmf"] == "4#"
    assert final["transfer_target"] == "sip:agent@example.com" and final["turns"] == 4
    assert final["recording_path"] == "2026/x.wav"
    assert final["summary"] == {"user_turns": 2, "bot_turns": 2, "interruptions": 1,
                                "voice_to_voice_ms_median": 700.0, "transfers": [
        {"target": "sip:agent@example.com", "outcome": "transferred", "status": None,
         "reason": "", "t": 8.1, "confirmed": False},
    ]}  # fmt: skip
    turns = [w.row for w in by_table["turns"]]
    assert [(t["speaker"], t["interrupted"]) for t in turns] == [
        ("user", False), ("bot", True), ("user", False), ("bot", False)
    ]  # fmt: skip
    question, cut = turns[0], turns[1]
    assert question["text"] == "What are your hours?"
    assert (question["start_s"], question["end_s"]) == (0.5, 2.5)
    assert cut["text"] == "We open at nine. We close at five on weekdays."
    assert cut["heard"] == "We open at nine. We close"
    assert (cut["start_s"], cut["end_s"]) == (2.9, 4.6)
    assert cut["latency"]["voice_to_voice_ms"] == 700.0 and cut["latency"]["total_ms"] == 400.0
    assert turns[3]["text"] == "Transferring you." and turns[3]["latency"] is None
    # The event log has every event but `vad` levels, in order.
    logged = [w.row["type"] for w in by_table["call_events"]]
    assert "vad" not in logged and logged[0] == "call_started" and logged[-1] == "call_ended"
    assert [w.row["seq"] for w in by_table["call_events"]] == list(range(len(logged)))
    # Webhooks: each event once per URL, the same order for both, seq counting up.
    hooks = by_table["webhook_outbox"]
    for url in URLS:
        mine = [w.row for w in hooks if w.row["url"] == url]
        assert [h["type"] for h in mine] == [
            "call.started", "call.answered", "turn.user", "turn.bot", "turn.user", "dtmf",
            "dtmf", "turn.bot", "call.transferred", "call.ended",
        ]  # fmt: skip
        assert [h["seq"] for h in mine] == list(range(len(mine)))
    assert len({h.row["id"] for h in hooks}) == len(hooks)
    # The transfer's webhook gives the agent's side the turns so far (what the caller heard
    # of a cut reply) and the caller's own words as the summary.
    moved = next(w.row["payload"] for w in hooks if w.row["type"] == "call.transferred")["data"]
    assert moved["target"] == "sip:agent@example.com" and moved["outcome"] == "transferred"
    assert [(t["speaker"], t["text"]) for t in moved["transcript"]] == [
        ("user", "What are your hours?"), ("bot", "We open at nine. We close"),
        ("user", "An agent please"), ("bot", "Transferring you."),
    ]  # fmt: skip
    assert moved["transcript"][1]["interrupted"] is True
    assert moved["summary"]["caller_last"] == ["What are your hours?", "An agent please"]
    assert moved["summary"]["text"].startswith('Caller said: "What are your hours?" | "An')
    assert moved["summary"]["dtmf"] == "4#" and "variables" not in moved
    ended = next(w.row["payload"] for w in hooks if w.row["type"] == "call.ended")
    assert ended["data"]["call_id"] == "sip-1" and ended["data"]["reason"] == "transferred"
    json.dumps([w.row["payload"] for w in hooks])  # the bodies are JSON as they stand


async def _count(engine, table) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(table))).scalar_one()


def test_records_commit_on_both_databases_and_erase(database_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        engine = await open_database(Settings(database_url=database_url).database)
        await open_database(Settings(database_url=database_url).database)  # migrate twice: no-op
        writer = RecordWriter(engine, batch_size=7)  # several transactions per call
        writer.start()
        for n in range(3):
            a_call(CallRecorder(f"sip-{n}@host", "sip", "gw1", writer.put, URLS))
        assert await writer.flush(20)
        assert await _count(engine, schema.calls) == 3
        assert await _count(engine, schema.turns) == 12
        async with engine.connect() as connection:
            row = (await connection.execute(
                select(schema.calls).where(schema.calls.c.id == "sip-1@host")
            )).mappings().one()  # fmt: skip
            assert row["end_reason"] == "transferred" and row["summary"]["bot_turns"] == 2
            assert row["ended_at"] > row["started_at"]
        # Retried batch (a commit whose answer was lost): duplicates are skipped, no error.
        replay: list[RecordWrite] = []
        a_call(CallRecorder("sip-1@host", "sip", "gw1", replay.append, []))
        for write in replay:
            if write.op == "insert" and write.table != "webhook_outbox":
                writer.put(write)
        assert await writer.flush(20) and writer.database_up
        assert await _count(engine, schema.turns) == 12
        assert await erase_call(engine, None, "sip-1@host")
        assert not await erase_call(engine, None, "sip-1@host")
        assert await _count(engine, schema.calls) == 2
        assert await _count(engine, schema.turns) == 8
        async with engine.connect() as connection:
            left = (await connection.execute(
                select(func.count()).select_from(schema.outbox)
                .where(schema.outbox.c.call_id == "sip-1@host")
            )).scalar_one()  # fmt: skip
        assert left == 0
        await writer.close()
        await engine.dispose()

    asyncio.run(main())


def test_open_records_of_a_killed_gateway_are_closed_as_lost(database_url: str) -> None:
    async def main() -> None:
        engine = await open_database(Settings(database_url=database_url).database)
        writer = RecordWriter(engine)
        writer.start()
        open_call = CallRecorder("ws-open", "ws", "gw1", writer.put, URLS)
        open_call.opened({})
        open_call(CallStarted(call_id="ws-open", t=0.0, info={}))
        other = CallRecorder("ws-other", "ws", "gw2", writer.put, URLS)
        other.opened({})
        assert await writer.flush(10)
        assert await close_lost_calls(engine, URLS, gateway="gw1") == ["ws-open"]
        async with engine.connect() as connection:
            rows = dict((await connection.execute(
                select(schema.calls.c.id, schema.calls.c.end_reason)
            )).all())  # fmt: skip
            hooks = (await connection.execute(
                select(schema.outbox.c.url, schema.outbox.c.seq, schema.outbox.c.type)
                .where(schema.outbox.c.call_id == "ws-open").order_by(schema.outbox.c.seq)
            )).all()  # fmt: skip
        assert rows == {"ws-open": "gateway_lost", "ws-other": None}
        for url in URLS:
            assert [(s, t) for u, s, t in hooks if u == url] == [
                (0, "call.started"), (1, "call.answered"), (2, "call.ended")]
        await writer.close()
        await engine.dispose()

    asyncio.run(main())


def test_a_database_outage_loses_nothing_and_shows_a_backlog() -> None:
    from tests import postgres

    with postgres_server() as url:

        async def main() -> None:
            engine = await open_database(Settings(database_url=url).database)
            writer = RecordWriter(engine)
            writer.start()
            a_call(CallRecorder("before", "ws", "gw1", writer.put, URLS))
            assert await writer.flush(10)
            postgres.stop(url)
            for n in range(5):
                a_call(CallRecorder(f"during-{n}", "ws", "gw1", writer.put, URLS))
            assert not await writer.flush(2.0)
            assert writer.backlog > 0 and not writer.database_up
            # The media path never waits: putting a row takes no time whatever the database.
            postgres.start(url)
            assert await writer.flush(60)
            assert writer.database_up and writer.backlog == 0
            assert await _count(engine, schema.calls) == 6
            assert await _count(engine, schema.turns) == 24
            await writer.close()
            await engine.dispose()

        asyncio.run(main())


def test_recording_is_stereo_on_one_timeline_with_unheard_frames_silenced(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[str, int]:
        files = RecordingFiles(tmp_path)
        from datetime import UTC, datetime

        recording = files.open("sip-a/b@c", datetime(2026, 12, 2, tzinfo=UTC))
        rng = np.random.default_rng(1)
        caller = rng.integers(-8000, 8000, 400 * FRAME_SAMPLES).astype(np.int16)
        bot = rng.integers(-8000, 8000, 400 * FRAME_SAMPLES).astype(np.int16)
        for k in range(400):
            frame = slice(k * FRAME_SAMPLES, (k + 1) * FRAME_SAMPLES)
            # The bot talks from tick 100 to 300; at tick 250 a barge-in drops the 3 frames
            # the sink still held (ticks 247-249).
            recording.tick(caller[frame], bot[frame] if 100 <= k < 300 else None)
            if k == 249:
                recording.unheard(3)
        result = await asyncio.wrap_future(recording.finish())
        files.close()
        return result

    name, size = asyncio.run(main())
    assert name.startswith("2026/12/02/sip-a_b_c-") and name.endswith(".wav")
    wav = read_wav(tmp_path / name)
    assert wav.sample_rate == 16000 and wav.samples.shape == (400 * FRAME_SAMPLES, 2)
    assert (tmp_path / name).stat().st_size == size
    rng = np.random.default_rng(1)
    caller = rng.integers(-8000, 8000, 400 * FRAME_SAMPLES).astype(np.int16)
    bot = rng.integers(-8000, 8000, 400 * FRAME_SAMPLES).astype(np.int16)
    left, right = wav.samples[:, 0], wav.samples[:, 1]
    assert np.array_equal(left, caller)
    heard = np.zeros_like(bot)
    for first, last in ((100, 247), (250, 300)):  # ticks 247-249 were never heard
        span = slice(first * FRAME_SAMPLES, last * FRAME_SAMPLES)
        heard[span] = bot[span]
    assert np.array_equal(right, heard)


def test_recording_names_stay_inside_the_directory(tmp_path: Path) -> None:
    files = RecordingFiles(tmp_path)
    with pytest.raises(ValueError):
        files.path("../../etc/passwd")
    files.close()


def test_transcript_search_ignores_case_beyond_ascii(database_url: str) -> None:
    from voicebot.calls.records.queries import CallFilter, list_calls

    async def main() -> None:
        engine = await open_database(Settings(database_url=database_url).database)
        writer = RecordWriter(engine)
        writer.start()
        recorder = CallRecorder("ws-fr", "ws", "gw1", writer.put, [])
        recorder.opened({})
        recorder(TranscriptReady(call_id="ws-fr", t=1.0, text="Je vais à l'ÉCOLE demain"))
        recorder.finished("caller_hangup")
        assert await writer.flush(10)
        found, _ = await list_calls(engine, CallFilter(q="école"))
        missing, _ = await list_calls(engine, CallFilter(q="collège"))
        assert [c["id"] for c in found] == ["ws-fr"] and missing == []
        await writer.close()
        await engine.dispose()

    asyncio.run(main())
