"""`/v1/calls` (DESIGN.md section 4a) over real records: calls are recorded by the real
`CallRecords` (recorder fed agent events, recordings fed known frames) into a SQLite file
and a real PostgreSQL server (the `database_url` fixture), then read over HTTP.

Most tests serve `calls_router` on a small app over the records (same event loop, httpx's
ASGI transport); the last one runs the whole gateway (`create_app` under uvicorn) and hangs
up a real WebSocket call through the API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.engines import ScriptedSTT
from tests.servers import uvicorn_server
from voicebot.agent.events import (
    AgentState,
    BotText,
    CallEnded,
    CallStarted,
    DtmfPressed,
    Interrupted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TranscriptReady,
    TurnLatency,
)
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.calls.records import schema
from voicebot.calls.records.queries import transcript_text
from voicebot.calls.records.recorder import CallRecorder
from voicebot.calls.records.service import CallRecords
from voicebot.config import Settings
from voicebot.gateway.app import create_app
from voicebot.gateway.calls_api import calls_router
from voicebot.gateway.errors import use_error_shape
from voicebot.models.base import Engines
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech

SIP_ID = "sip-a84b4c76e66710@pc33.example.com"
T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
HOOK = {"urls": ["http://127.0.0.1:9/hook"], "secret": SECRET}  # outbox rows, no sender


def _settings(database_url: str, tmp_path: Path, **extra: Any) -> Settings:
    extra.setdefault("webhooks", HOOK)
    return Settings(database_url=database_url, data_dir=tmp_path / "data", gateway_id="gw-test",
                    **extra)  # fmt: skip


# -- recording calls ----------------------------------------------------------------------------
def caller_frame(k: int) -> np.ndarray:
    return (np.arange(FRAME_SAMPLES, dtype=np.int32) + k * 7).astype(np.int16)


def bot_frame(k: int) -> np.ndarray:
    return -caller_frame(k)


@dataclass
class Script:
    """One call as the agent would publish it: a bot greeting, a caller turn, an answer."""

    user: str = "When are you open on Saturday?"
    answer: list[str] = field(
        default_factory=lambda: ["On Saturday we are open from nine to one.", "Anything else?"]
    )
    heard: str | None = None  # set: the answer is cut by a barge-in, the caller heard this
    dtmf: str = ""
    reason: str = "caller_hangup"
    frames: int = 60  # recorded 20 ms ticks (with recording on)
    end: bool = True  # False: the call stays live


def record_call(
    records: CallRecords, call_id: str, *, transport: str = "sip", started: datetime | None = None,
    script: Script | None = None, recording: bool = True,
) -> CallRecorder:  # fmt: skip
    s = script or Script()
    if recording:
        recorder, rec = records.open_call(call_id, transport)
    else:
        assert records.writer is not None
        recorder, rec = CallRecorder(call_id, transport, records.gateway, records.writer.put,
                                     records.settings.webhooks.urls), None  # fmt: skip
    if started is not None:
        recorder.started_at = started
    info = {"from": f"<sip:+1555000{len(call_id)}@pbx.example.com>", "to": "<sip:desk@vb>",
            "call_id": call_id}  # fmt: skip
    recorder.opened(info)

    def ev(kind: Callable[..., Any], t: float, **fields: Any) -> None:
        recorder(kind(call_id=call_id, t=t, **fields))

    ev(CallStarted, 0.0, info=info)
    ev(StateChanged, 0.0, state=AgentState.SPEAKING)
    ev(BotText, 0.3, text="Bright Smile Dental, how can I help?")
    ev(StateChanged, 2.6, state=AgentState.WAITING_FOR_SPEECH)
    ev(SpeechStarted, 3.45, onset=3.2)
    ev(SpeechEnded, 4.9, duration=1.7)
    ev(TranscriptReady, 5.1, text=s.user)
    ev(TurnLatency, 5.6, speculative=False, vad_speech_end=4.86, first_audio_sent=5.6,
       total_ms=700.0)  # fmt: skip
    for i, sentence in enumerate(s.answer):
        ev(BotText, 5.6 + 1.5 * i, text=sentence)
    if s.heard is not None:
        ev(Interrupted, 7.1, latency_ms=120.0, heard=s.heard)
    else:
        ev(StateChanged, 9.0, state=AgentState.WAITING_FOR_SPEECH)
    for digit in s.dtmf:
        ev(DtmfPressed, 9.5, digit=digit)
    if rec is not None:
        for k in range(s.frames):
            rec.tick(caller_frame(k), bot_frame(k))
    if s.end:
        ev(CallEnded, 10.0, reason=s.reason)
        records.finish_call(recorder, rec, s.reason)
    return recorder


@dataclass
class FakeSession:
    ended: list[str] = field(default_factory=list)

    def end(self, reason: str) -> None:
        self.ended.append(reason)


@dataclass
class FakeManager:
    """The call manager as the API sees it: its live calls, and hanging one up."""

    sessions: dict[str, FakeSession] = field(default_factory=dict)
    calls: dict[str, Any] = field(default_factory=dict)

    def hangup(self, call_id: str, reason: str) -> bool:
        session = self.sessions.get(call_id)
        if session is None:
            return False
        session.end(reason)
        return True


@asynccontextmanager
async def api(
    database_url: str, tmp_path: Path, *, token: str | None = None, manager: Any = None
) -> AsyncIterator[tuple[httpx.AsyncClient, CallRecords, Any]]:
    """The records open on the test's database and `calls_router` served over them."""
    settings = _settings(database_url, tmp_path, api_token=token)
    records = CallRecords(settings)
    await records.start()
    state = SimpleNamespace(settings=settings, records=records,
                            manager=manager or FakeManager())  # fmt: skip
    app = FastAPI()
    use_error_shape(app)
    app.include_router(calls_router(state))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     headers=headers) as client:  # fmt: skip
            yield client, records, state
    finally:
        await records.close()


async def _count(records: CallRecords, table: Any, call_id: str) -> int:
    assert records.engine is not None
    async with records.engine.connect() as connection:
        return (await connection.execute(
            select(func.count()).select_from(table).where(table.c.call_id == call_id)
        )).scalar_one()  # fmt: skip


# -- listing ------------------------------------------------------------------------------------
def test_list_filters_search_and_summaries(database_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with api(database_url, tmp_path) as (client, records, _):
            at = [T0 + timedelta(minutes=i) for i in range(6)]
            record_call(records, "c0-sip", started=at[0], script=Script(dtmf="12#"))
            record_call(records, "c1-ws", transport="ws", started=at[1],
                        script=Script(user="Can I book a CLEANING next week?"))  # fmt: skip
            record_call(records, "c2-sip", started=at[2],
                        script=Script(user="I'm 100% sure it hurts", reason="bot_hangup"))
            record_call(records, "c3-webrtc", transport="webrtc", started=at[3],
                        script=Script(user="is parking free_of charge?", heard="On Saturday"))
            record_call(records, "c4-live", started=at[4], script=Script(end=False))
            record_call(records, "c5-norec", transport="ws", started=at[5], recording=False)
            assert await records.flush()

            page = (await client.get("/v1/calls")).json()
            assert [c["id"] for c in page["calls"]] == [
                "c5-norec", "c4-live", "c3-webrtc", "c2-sip", "c1-ws", "c0-sip"]
            assert page["next_cursor"] is None
            first = page["calls"][-1]
            assert first["started_at"] == "2025-05-01T09:00:00Z"
            assert first["answered_at"].endswith("Z") and first["ended_at"].endswith("Z")
            assert first["from"] == "<sip:+15550006@pbx.example.com>"
            assert first["to"] == "<sip:desk@vb>"
            assert first["gateway"] == "gw-test" and first["direction"] == "inbound"
            assert first["transport"] == "sip" and first["end_reason"] == "caller_hangup"
            assert first["dtmf"] == "12#" and first["turns"] == 3 and first["duration_s"] >= 0
            assert first["summary"]["user_turns"] == 1 and first["summary"]["bot_turns"] == 2
            assert first["summary"]["voice_to_voice_ms_median"] == pytest.approx(740.0)
            assert first["recording"] == "/v1/calls/c0-sip/recording"
            assert set(first) == {
                "id", "gateway", "transport", "direction", "from", "to", "started_at",
                "answered_at", "ended_at", "end_reason", "duration_s", "turns", "dtmf",
                "transfer_target", "summary", "recording", "variables"}  # fmt: skip
            assert first["variables"] == {}
            by_id = {c["id"]: c for c in page["calls"]}
            assert by_id["c5-norec"]["recording"] is None
            assert by_id["c4-live"]["ended_at"] is None and by_id["c4-live"]["recording"] is None
            assert by_id["c3-webrtc"]["summary"]["interruptions"] == 1

            async def ids(**params: Any) -> list[str]:
                response = await client.get("/v1/calls", params=params)
                assert response.status_code == 200, response.text
                return [c["id"] for c in response.json()["calls"]]

            assert await ids(transport="ws") == ["c5-norec", "c1-ws"]
            assert await ids(end_reason="bot_hangup") == ["c2-sip"]
            assert await ids(status="live") == ["c4-live"]
            assert "c4-live" not in await ids(status="ended")
            assert len(await ids(status="ended")) == 5
            assert await ids(since="2025-05-01T09:02:00Z") == [
                "c5-norec", "c4-live", "c3-webrtc", "c2-sip"]
            assert await ids(until="2025-05-01T09:02:00Z") == ["c1-ws", "c0-sip"]
            # another offset, the same instant; a naive time is UTC
            assert await ids(since="2025-05-01T11:01:00+02:00", until="2025-05-01T09:03:00") == [
                "c2-sip", "c1-ws"]
            assert await ids(transport="sip", since="2025-05-01T09:01:00Z", status="ended") == [
                "c2-sip"]
            # text search: case-insensitive, over caller and bot turns, wildcards literal
            assert await ids(q="cleaning") == ["c1-ws"]
            assert await ids(q="SATURDAY") == ["c5-norec", "c4-live", "c3-webrtc", "c2-sip",
                                               "c1-ws", "c0-sip"]  # fmt: skip
            assert await ids(q="100%") == ["c2-sip"]
            assert await ids(q="%") == ["c2-sip"]
            assert await ids(q="free_of") == ["c3-webrtc"]
            assert await ids(q="_") == ["c3-webrtc"]
            assert await ids(q="free%of") == []
            assert await ids(q="nothing like this") == []
            assert await ids(q="parking", transport="ws") == []

            assert (await client.get("/v1/calls", params={"limit": 501})).status_code == 422
            assert (await client.get("/v1/calls", params={"limit": 0})).status_code == 422
            assert (await client.get("/v1/calls", params={"status": "gone"})).status_code == 422
            assert (await client.get("/v1/calls", params={"since": "yesterday"})).status_code == 422

    asyncio.run(main())


def test_cursor_pages_have_no_duplicates_or_gaps(database_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with api(database_url, tmp_path) as (client, records, _):
            expected = []
            for i in range(23):
                # groups of three calls start in the same microsecond: the id breaks the tie
                started = T0 + timedelta(seconds=i // 3, microseconds=123456)
                record_call(records, f"call-{i:02d}", started=started, recording=False)
                expected.append((started, f"call-{i:02d}"))
            assert await records.flush()
            expected = [cid for _, cid in sorted(expected, reverse=True)]

            seen, cursor, pages = [], None, 0
            while True:
                params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/v1/calls", params=params)).json()
                seen += [c["id"] for c in page["calls"]]
                pages += 1
                if pages == 2:  # a call starting while the client pages does not shift pages
                    record_call(records, "call-new", started=T0 + timedelta(hours=1),
                                recording=False)  # fmt: skip
                    assert await records.flush()
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert pages == 5 and seen == expected  # 5+5+5+5+3, in order, each once

            exact = (await client.get("/v1/calls", params={"limit": 24})).json()
            assert len(exact["calls"]) == 24 and exact["next_cursor"] is None
            # the cursor carries on with the same filters
            where = {"q": "saturday", "until": "2025-05-01T09:00:03Z"}
            first = (await client.get("/v1/calls", params={"limit": 2, **where})).json()
            rest = (await client.get("/v1/calls", params={
                "limit": 500, "cursor": first["next_cursor"], **where})).json()  # fmt: skip
            assert [c["id"] for c in first["calls"] + rest["calls"]] == expected[-9:]

            for bad in ("nope", "!!!", base64.urlsafe_b64encode(b'["x", 1]').decode(),
                        base64.urlsafe_b64encode(b"[1,2,3]").decode(), "e30"):  # fmt: skip
                response = await client.get("/v1/calls", params={"cursor": bad})
                assert response.status_code == 400, bad
                assert "cursor" in response.json()["error"]

    asyncio.run(main())


# -- one call -----------------------------------------------------------------------------------
def test_call_detail_and_transcript_of_sip_call_ids(database_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with api(database_url, tmp_path) as (client, records, _):
            slash_id = "sip-77/odd%id?x@host"
            record_call(records, SIP_ID, script=Script(heard="On Saturday we are open", dtmf="5"))
            record_call(records, slash_id, script=Script(heard=""))
            assert await records.flush()

            summary = (await client.get("/v1/calls")).json()["calls"]
            by_id = {c["id"]: c for c in summary}
            assert by_id[SIP_ID]["recording"] == f"/v1/calls/{SIP_ID}/recording"
            assert by_id[slash_id]["recording"] == "/v1/calls/sip-77/odd%25id%3Fx@host/recording"

            response = await client.get(f"/v1/calls/{SIP_ID}")
            assert response.status_code == 200
            call = response.json()
            assert (call["id"], call["dtmf"], call["end_reason"]) == (SIP_ID, "5", "caller_hangup")
            assert call["info"] == {"from": "<sip:+155500035@pbx.example.com>",
                                    "to": "<sip:desk@vb>", "call_id": SIP_ID}  # fmt: skip
            assert set(call) == set(summary[0]) | {"info", "events"}
            assert call["from"] == "<sip:+155500035@pbx.example.com>"
            turns = call["turns"]
            assert [(t["idx"], t["speaker"]) for t in turns] == [
                (0, "bot"), (1, "user"), (2, "bot")]  # fmt: skip
            assert turns[0] == {
                "idx": 0, "speaker": "bot", "text": "Bright Smile Dental, how can I help?",
                "heard": "Bright Smile Dental, how can I help?", "start_s": 0.3, "end_s": 2.6,
                "interrupted": False, "latency": None}  # fmt: skip
            assert turns[1]["text"] == turns[1]["heard"] == "When are you open on Saturday?"
            assert (turns[1]["start_s"], turns[1]["end_s"]) == (3.2, 4.9)
            assert turns[2]["text"] == "On Saturday we are open from nine to one. Anything else?"
            assert turns[2]["heard"] == "On Saturday we are open" and turns[2]["interrupted"]
            assert turns[2]["latency"]["voice_to_voice_ms"] == pytest.approx(740.0)
            types = [e["type"] for e in call["events"]]
            assert types[0] == "call_started" and types[-1] == "call_ended"
            assert "interrupted" in types and "dtmf" in types and "turn_latency" in types
            assert all(e["call_id"] == SIP_ID for e in call["events"])
            ts = [e["t"] for e in call["events"]]
            assert ts == sorted(ts)

            lean = (await client.get(f"/v1/calls/{SIP_ID}", params={"events": "false"})).json()
            assert "events" not in lean and lean["turns"] == turns and lean["answered_at"]

            odd = await client.get("/v1/calls/sip-77/odd%25id%3Fx@host")
            assert odd.status_code == 200 and odd.json()["id"] == slash_id
            assert (await client.get(by_id[slash_id]["recording"])).status_code == 200
            odd_text = (await client.get("/v1/calls/sip-77/odd%25id%3Fx@host/transcript",
                                         params={"format": "text"})).text  # fmt: skip
            assert odd_text.splitlines()[-1] == "[00:05.6] bot: [interrupted]"

            transcript = (await client.get(f"/v1/calls/{SIP_ID}/transcript")).json()
            assert transcript["call_id"] == SIP_ID
            assert transcript["turns"][2] == {
                "speaker": "bot", "text": turns[2]["text"], "heard": "On Saturday we are open",
                "start_s": 5.6, "end_s": 7.1, "interrupted": True}  # fmt: skip
            text = await client.get(f"/v1/calls/{SIP_ID}/transcript", params={"format": "text"})
            assert text.headers["content-type"].startswith("text/plain")
            assert text.text == (
                "[00:00.3] bot: Bright Smile Dental, how can I help?\n"
                "[00:03.2] caller: When are you open on Saturday?\n"
                "[00:05.6] bot: On Saturday we are open [interrupted]\n"
            )

            for path in ("/v1/calls/nope@x", "/v1/calls/nope@x/transcript",
                         "/v1/calls/nope@x/recording"):  # fmt: skip
                missing = await client.get(path)
                assert missing.status_code == 404 and missing.json()["error"] == "no such call"

    asyncio.run(main())


def test_transcript_clock_past_an_hour() -> None:
    turns = [{"speaker": "user", "text": "hi", "heard": "hi", "start_s": 3725.26,
              "interrupted": False},
             {"speaker": "bot", "text": "a b", "heard": "a b", "start_s": 59.96,
              "interrupted": False}]  # fmt: skip
    assert transcript_text(turns) == "[1:02:05.3] caller: hi\n[01:00.0] bot: a b\n"


# -- recordings ---------------------------------------------------------------------------------
def test_recording_whole_and_byte_ranges(database_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with api(database_url, tmp_path) as (client, records, _):
            record_call(records, SIP_ID, script=Script(frames=250))  # 5 s
            record_call(records, "norec", recording=False)
            record_call(records, "live", script=Script(end=False))
            assert await records.flush()
            url = f"/v1/calls/{SIP_ID}/recording"

            whole = await client.get(url)
            assert whole.status_code == 200
            assert whole.headers["content-type"] == "audio/wav"
            assert whole.headers["accept-ranges"] == "bytes"
            body = whole.content
            size = 44 + 250 * FRAME_SAMPLES * 4
            assert len(body) == size == int(whole.headers["content-length"])
            (tmp_path / "got.wav").write_bytes(body)
            with wave.open(str(tmp_path / "got.wav")) as wav:
                assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 16000, 2)
                samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
            want = np.concatenate([np.stack([caller_frame(k), bot_frame(k)], axis=1)
                                   for k in range(250)])  # fmt: skip
            assert np.array_equal(samples, want)  # caller left, bot right, in order

            head = await client.get(url, headers={"Range": "bytes=0-43"})
            assert head.status_code == 206
            assert head.headers["content-range"] == f"bytes 0-43/{size}"
            assert head.headers["content-length"] == "44" and head.content == body[:44]
            assert head.content[:4] == b"RIFF" and head.content[8:12] == b"WAVE"

            middle = await client.get(url, headers={"Range": "bytes=1000-1999"})
            assert middle.status_code == 206 and middle.content == body[1000:2000]
            assert middle.headers["content-range"] == f"bytes 1000-1999/{size}"

            tail = await client.get(url, headers={"Range": "bytes=-640"})
            assert tail.status_code == 206 and tail.content == body[-640:]
            assert tail.headers["content-range"] == f"bytes {size - 640}-{size - 1}/{size}"

            rest = await client.get(url, headers={"Range": f"bytes={size - 10}-"})
            assert rest.status_code == 206 and rest.content == body[-10:]

            past_end = await client.get(url, headers={"Range": "bytes=99999999-"})
            assert past_end.status_code == 416
            assert past_end.headers["content-range"] == f"bytes */{size}"
            last_byte = await client.get(url, headers={"Range": f"bytes={size}-{size + 5}"})
            assert last_byte.status_code == 416

            assert (await client.get("/v1/calls/norec/recording")).json()["error"] == (
                "this call has no recording")
            live = await client.get("/v1/calls/live/recording")
            assert live.status_code == 409 and "live" in live.json()["error"]

    asyncio.run(main())


# -- DELETE -------------------------------------------------------------------------------------
def test_delete_hangs_up_running_calls_erases_ended(database_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        session = FakeSession()
        manager = FakeManager(sessions={"running@here": session})
        async with api(database_url, tmp_path, manager=manager) as (client, records, _):
            record_call(records, SIP_ID)
            record_call(records, "other", recording=False)
            record_call(records, "elsewhere", script=Script(end=False))
            assert await records.flush()
            assert records.files is not None and records.engine is not None
            async with records.engine.connect() as connection:
                name = (await connection.execute(select(schema.calls.c.recording_path)
                        .where(schema.calls.c.id == SIP_ID))).scalar_one()  # fmt: skip
            path = records.files.path(name)
            assert path.is_file()
            for table in (schema.turns, schema.events, schema.outbox):
                assert await _count(records, table, SIP_ID) > 0

            hangup = await client.delete("/v1/calls/running@here")
            assert hangup.status_code == 202
            assert hangup.json() == {"call_id": "running@here", "status": "hanging_up"}
            assert session.ended == ["api_hangup"]

            gone = await client.delete(f"/v1/calls/{SIP_ID}")
            assert gone.status_code == 204 and gone.content == b""
            assert not path.exists()
            for table in (schema.turns, schema.events, schema.outbox):
                assert await _count(records, table, SIP_ID) == 0
            async with records.engine.connect() as connection:
                left = (await connection.execute(select(schema.calls.c.id))).scalars().all()
            assert sorted(left) == ["elsewhere", "other"]
            assert await _count(records, schema.turns, "other") == 3
            assert (await client.get(f"/v1/calls/{SIP_ID}")).status_code == 404
            assert (await client.get(f"/v1/calls/{SIP_ID}/recording")).status_code == 404
            assert (await client.delete(f"/v1/calls/{SIP_ID}")).status_code == 404

            # open in the records but not running here: another gateway's, not erased
            elsewhere = await client.delete("/v1/calls/elsewhere")
            assert elsewhere.status_code == 409 and "gw-test" in elsewhere.json()["error"]
            assert (await client.delete("/v1/calls/other")).status_code == 204
            assert [c["id"] for c in (await client.get("/v1/calls")).json()["calls"]] == [
                "elsewhere"]

    asyncio.run(main())


def test_what_only_the_owner_can_do_gets_409_naming_it(database_url: str, tmp_path: Path) -> None:
    """Gateways sharing one database: a live call of another gateway, and an ended call whose
    recording is on another gateway's disk, are answered 409 with the owner in
    X-Voicebot-Gateway (a load balancer routes the retry on it); reads answer here."""

    async def main() -> None:
        async with api(database_url, tmp_path, manager=FakeManager(sessions={})) as (
                client, records, _):  # fmt: skip
            record_call(records, "theirs-ended")
            record_call(records, "theirs-live", script=Script(end=False), recording=False)
            assert await records.flush() and records.engine is not None
            async with records.engine.begin() as connection:
                await connection.execute(schema.calls.update().values(gateway="gw-other"))
                await connection.execute(schema.calls.update()
                                         .where(schema.calls.c.id == "theirs-ended")
                                         .values(recording_path="on-their-disk.wav"))  # fmt: skip
            for method, url in [("GET", "/v1/calls/theirs-ended/recording"),
                                ("DELETE", "/v1/calls/theirs-ended"),
                                ("DELETE", "/v1/calls/theirs-live")]:  # fmt: skip
                got = await client.request(method, url)
                assert got.status_code == 409, (url, got.text)
                assert got.headers["x-voicebot-gateway"] == "gw-other"
                assert "gw-other" in got.json()["error"]
            listed = (await client.get("/v1/calls")).json()["calls"]
            assert sorted(c["id"] for c in listed) == ["theirs-ended", "theirs-live"]
            assert (await client.get("/v1/calls/theirs-ended")).status_code == 200

    asyncio.run(main())


# -- auth, records off, OpenAPI -----------------------------------------------------------------
def test_bearer_token_and_records_off(tmp_path: Path) -> None:
    async def main() -> None:
        url = f"sqlite:///{tmp_path / 'auth.db'}"
        async with api(url, tmp_path, token="s3cret") as (client, records, state):
            record_call(records, SIP_ID)
            assert await records.flush()
            for method, path in (("GET", "/v1/calls"), ("GET", f"/v1/calls/{SIP_ID}"),
                                 ("GET", f"/v1/calls/{SIP_ID}/recording"),
                                 ("GET", f"/v1/calls/{SIP_ID}/transcript"),
                                 ("DELETE", f"/v1/calls/{SIP_ID}")):  # fmt: skip
                for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"},
                                {"Authorization": "Basic czNjcmV0"}):  # fmt: skip
                    refused = await client.request(method, path, headers=headers)
                    assert refused.status_code == 401, (method, path, headers)
                    assert refused.headers["www-authenticate"] == "Bearer"
                good = {"Authorization": "Bearer s3cret"}
                allowed = await client.request(method, path, headers=good)
                assert allowed.status_code in (200, 204), (method, path)

            state.records = None  # records off
            for method, path in (("GET", "/v1/calls"), ("GET", "/v1/calls/x"),
                                 ("GET", "/v1/calls/x/recording"),
                                 ("GET", "/v1/calls/x/transcript"),
                                 ("DELETE", "/v1/calls/x")):  # fmt: skip
                off = await client.request(method, path)
                assert off.status_code == 503, (method, path)
                assert "records" in off.json()["error"]
            state.records = records

    asyncio.run(main())


def test_openapi_documents_the_calls_api() -> None:
    spec = create_app(Settings()).openapi()
    paths = {p: ops for p, ops in spec["paths"].items() if p.startswith("/v1/calls")}
    assert set(paths) == {"/v1/calls", "/v1/calls/{call_id}", "/v1/calls/{call_id}/recording",
                          "/v1/calls/{call_id}/transcript"}  # fmt: skip
    for ops in paths.values():
        for op in ops.values():
            assert op["summary"] and op["description"]
            assert {"401", "503"} <= set(op["responses"])
    schemas = spec["components"]["schemas"]
    for name in ("CallPage", "CallSummary", "CallDetail", "TurnOut", "TranscriptOut", "HangupOut"):
        assert name in schemas
    assert schemas["CallSummary"]["examples"][0]["id"] == SIP_ID
    assert "from" in schemas["CallSummary"]["properties"]
    listing = paths["/v1/calls"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CallPage")
    assert {p["name"] for p in listing["parameters"]} >= {
        "since", "until", "transport", "end_reason", "status", "q", "limit", "cursor"}
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["maximum"], limit["default"]) == (500, 50)
    delete = paths["/v1/calls/{call_id}"]["delete"]["responses"]
    assert {"202", "204", "404", "409"} <= set(delete)
    recording = paths["/v1/calls/{call_id}/recording"]["get"]["responses"]
    assert "audio/wav" in recording["206"]["content"] and "416" in recording


# -- the whole gateway --------------------------------------------------------------------------
def test_the_gateway_hangs_up_and_erases_a_live_call(database_url: str, tmp_path: Path) -> None:
    """create_app with light engines, under uvicorn; a real WebSocket call; the API finds it
    live, hangs it up, then serves and erases what it left."""
    settings = _settings(database_url, tmp_path, api_token="tok", webhooks={},
                         server={"warm_up": False}, agent={"greeting": None})  # fmt: skip
    engines = Engines(ScriptedSTT(), ScriptedLanguageModel.from_file(), EspeakTextToSpeech())
    app = create_app(settings, engines)
    auth = {"Authorization": "Bearer tok"}

    async def main(base: str) -> None:
        ws_url = base.replace("http", "ws") + "/ws?token=tok"
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as client:
            async with websockets.connect(ws_url) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))

                async def stream() -> None:
                    silence = np.zeros(FRAME_SAMPLES, "<i2").tobytes()
                    try:
                        while True:
                            await ws.send(silence)
                            await asyncio.sleep(0.02)
                    except websockets.ConnectionClosed:
                        pass

                async def drain() -> None:
                    try:
                        async for _ in ws:
                            pass
                    except websockets.ConnectionClosed:
                        pass

                sender, receiver = asyncio.create_task(stream()), asyncio.create_task(drain())
                live = await _poll(client, {"status": "live"}, lambda calls: calls)
                call_id = live[0]["id"]
                assert live[0]["transport"] == "ws" and live[0]["ended_at"] is None
                await asyncio.sleep(0.5)  # some audio for the recording
                conflict = await client.get(f"/v1/calls/{call_id}/recording")
                assert conflict.status_code == 409
                hangup = await client.delete(f"/v1/calls/{call_id}")
                assert hangup.status_code == 202, hangup.text
                await asyncio.wait_for(asyncio.gather(sender, receiver), 10)
                assert ws.close_code is not None
            ended = await _poll(client, {"status": "ended"}, lambda calls: calls)
            assert ended[0]["id"] == call_id and ended[0]["end_reason"] == "api_hangup"
            detail = (await client.get(f"/v1/calls/{call_id}")).json()
            assert detail["events"][-1]["type"] == "call_ended"
            assert detail["events"][-1]["reason"] == "api_hangup"
            recording = await client.get(ended[0]["recording"])
            assert recording.status_code == 200 and recording.content[:4] == b"RIFF"
            assert len(recording.content) > 44 + 0.4 * 16000 * 4
            part = await client.get(ended[0]["recording"], headers={"Range": "bytes=-100"})
            assert part.status_code == 206 and part.content == recording.content[-100:]
            assert (await client.get("/v1/calls", headers={"Authorization": ""})).status_code == 401
            assert (await client.delete(f"/v1/calls/{call_id}")).status_code == 204
            assert (await client.get(f"/v1/calls/{call_id}")).status_code == 404
            assert not list((tmp_path / "data" / "recordings").rglob("*.wav"))

    with uvicorn_server(app) as base:
        asyncio.run(main(base))


async def _poll(client: httpx.AsyncClient, params: dict[str, str], done: Callable[[list], Any],
                timeout_s: float = 15.0) -> list[dict[str, Any]]:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get("/v1/calls", params=params)
        assert response.status_code == 200, response.text
        calls = response.json()["calls"]
        if done(calls):
            return calls
        assert time.monotonic() < deadline, f"no calls matching {params}"
        await asyncio.sleep(0.1)
