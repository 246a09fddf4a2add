"""Webhooks (calls/webhooks): call events reach a real HTTP receiver signed per Standard
Webhooks, at least once, in order per call, through receiver failures, hangs and outages,
with dead letters, the dead-letter API and leases shared by two senders.

Every test that touches the outbox runs on a SQLite file and on a real PostgreSQL server
(`database_url`). The receiver is a threaded HTTP server on 127.0.0.1 that checks each
request with the reference `standardwebhooks` library, as a receiver would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.webhook_receiver import SECRET, Receiver
from voicebot.agent.events import (
    AgentState,
    BotText,
    CallEnded,
    CallStarted,
    DtmfPressed,
    Event,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TranscriptReady,
)
from voicebot.calls.metrics import GatewayMetrics
from voicebot.calls.records import schema
from voicebot.calls.records.database import open_database
from voicebot.calls.records.service import CallRecords
from voicebot.calls.records.writes import utc_now
from voicebot.calls.webhooks import WebhookSender, outbox, signing
from voicebot.config import Settings
from voicebot.gateway.webhooks_api import router as webhooks_router

TYPES = ["call.started", "call.answered", "turn.user", "turn.bot", "dtmf", "call.ended"]
FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 2.0}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


# -- calls, settings, waiting ---------------------------------------------------------------------
def call_events(cid: str) -> list[Event]:
    """Answered, one question and answer, a DTMF digit, the end: TYPES once each."""
    return [
        CallStarted(call_id=cid, t=0.0, info={}),
        StateChanged(call_id=cid, t=0.0, state=AgentState.WAITING_FOR_SPEECH),
        SpeechStarted(call_id=cid, t=0.6, onset=0.5),
        SpeechEnded(call_id=cid, t=1.5, duration=1.0),
        TranscriptReady(call_id=cid, t=1.6, text="When do you open?"),
        BotText(call_id=cid, t=1.9, text="At nine."),
        StateChanged(call_id=cid, t=2.5, state=AgentState.WAITING_FOR_SPEECH),
        DtmfPressed(call_id=cid, t=3.0, digit="5"),
        CallEnded(call_id=cid, t=3.2, reason="hangup"),
    ]


def run_calls(records: CallRecords, call_ids: list[str]) -> None:
    """The calls' events fed interleaved, one event of each call in turn."""
    recorders = []
    for cid in call_ids:
        recorder, _ = records.open_call(cid, "ws")
        recorder.opened({"from": f"caller-{cid}"})
        recorders.append(recorder)
    scripts = [call_events(cid) for cid in call_ids]
    for step in range(max(len(s) for s in scripts)):
        for recorder, script in zip(recorders, scripts, strict=True):
            if step < len(script):
                recorder(script[step])
    for recorder in recorders:
        records.finish_call(recorder, None, "hangup")


def settings_for(database_url: str, tmp_path: Path, urls: list[str], gateway: str = "gw-a",
                 **webhooks: Any) -> Settings:  # fmt: skip
    return Settings(
        database_url=database_url, data_dir=tmp_path, gateway_id=gateway,
        records={"recording": False, "retention_days": 0},
        webhooks={"urls": urls, "secret": SECRET, **FAST, **webhooks},
    )  # fmt: skip


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def rows(engine: Any, **where: Any) -> list[Any]:
    table = schema.outbox
    query = select(table).order_by(table.c.url, table.c.call_id, table.c.seq)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    async with engine.connect() as connection:
        return list((await connection.execute(query)).all())


def all_status(engine: Any, status: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await rows(engine)
        return len(found) == count and all(r.status == status for r in found)

    return check


def in_seq_order(receiver: Receiver, outbox_rows: list[Any]) -> dict[tuple[str, str], list[int]]:
    """The seq numbers as each (path, call) received them (duplicates kept)."""
    seq = {r.id: r.seq for r in outbox_rows}
    order: dict[tuple[str, str], list[int]] = {}
    for got in receiver.received:
        order.setdefault((got.path, got.call_id), []).append(seq[got.id])
    return order


def count(metrics: GatewayMetrics, outcome: str) -> float:
    return metrics.webhook_deliveries.labels(outcome)._value.get()


# -- signing ---------------------------------------------------------------------------------------
def test_signature_matches_the_spec_vector_and_the_reference_library() -> None:
    # The Standard Webhooks spec's example: secret, id, timestamp, body, signature.
    key = signing.secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert signing.signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    payload = {"type": "turn.user", "timestamp": "2026-01-01T00:00:00Z",
               "data": {"call_id": "c1", "text": "Grüße, ça va?"}}  # fmt: skip
    content = signing.body(payload)
    assert content == signing.body(json.loads(content))  # the same bytes every time
    headers = signing.signed_headers(key, "msg_1", int(time.time()), content)
    assert headers["content-type"] == "application/json"
    assert Webhook(SECRET).verify(content, headers) == payload
    with pytest.raises(ValueError, match="base64"):
        signing.secret_key("whsec_not base64!")


# -- delivery --------------------------------------------------------------------------------------
def test_events_are_delivered_signed_and_a_tampered_body_fails_verification(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async def main() -> None:
        settings = settings_for(database_url, tmp_path, [receiver.url()])
        metrics = GatewayMetrics()
        records = CallRecords(settings, metrics)
        await records.start()
        sender = WebhookSender.for_records(records, metrics)
        await sender.start()
        try:
            run_calls(records, ["call-1"])
            assert await records.flush()
            assert records.engine is not None
            await until(all_status(records.engine, "delivered", len(TYPES)))
            stored = await rows(records.engine)
        finally:
            await sender.close()
            await records.close()
        assert receiver.rejected == 0
        assert [r.type for r in receiver.received] == TYPES
        assert [r.id for r in receiver.received] == [r.id for r in stored]
        assert all(r.attempts == 1 and r.delivered_at is not None for r in stored)
        assert count(metrics, "delivered") == len(TYPES) and count(metrics, "failed") == 0
        assert metrics.webhook_latency._sum.get() > 0
        got = receiver.received[2]
        assert json.loads(got.body) == stored[2].payload  # the body is the stored payload
        assert Webhook(SECRET).verify(got.body, got.headers)["data"]["text"] == "When do you open?"
        tampered = got.body.replace(b"When do you open?", b"When do you close")
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(tampered, got.headers)
        with pytest.raises(WebhookVerificationError):  # another receiver's secret
            Webhook("whsec_" + "QUJD" * 8).verify(got.body, got.headers)

    asyncio.run(main())


def test_order_is_kept_per_call_and_receiver_while_calls_go_in_parallel(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async def main() -> None:
        urls = [receiver.url("/a"), receiver.url("/b")]
        settings = settings_for(database_url, tmp_path, urls, concurrency=8)
        records = CallRecords(settings)
        await records.start()
        # The receiver is slow, so a second event of a call sent too early would overlap.
        receiver.answer = lambda got, attempt: (200, 0.03)
        run_calls(records, ["call-1", "call-2"])
        assert await records.flush()
        assert records.engine is not None
        sender = WebhookSender.for_records(records)
        await sender.start()
        try:
            await until(all_status(records.engine, "delivered", 2 * 2 * len(TYPES)))
            stored = await rows(records.engine)
        finally:
            await sender.close()
            await records.close()
        order = in_seq_order(receiver, stored)
        assert sorted(order) == [(p, c) for p in ("/a", "/b") for c in ("call-1", "call-2")]
        for key, seqs in order.items():
            assert seqs == list(range(len(TYPES))), key
        assert receiver.overlaps == []
        assert receiver.max_in_flight >= 2  # the calls (and receivers) did not wait on each other

    asyncio.run(main())


def test_failures_and_a_hang_are_retried_with_the_same_webhook_id(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async def main() -> None:
        settings = settings_for(database_url, tmp_path, [receiver.url()], timeout_s=0.5)
        metrics = GatewayMetrics()
        records = CallRecords(settings, metrics)
        await records.start()
        # 500 on the first attempt, no answer for 30 s on the second, then 200.
        receiver.answer = lambda got, n: {1: (500, 0.0), 2: (200, 30.0)}.get(n, (200, 0.0))
        recorder, _ = records.open_call("call-1", "ws")
        recorder.opened({})
        sender = WebhookSender.for_records(records, metrics)
        await sender.start()
        try:
            assert records.engine is not None
            await until(all_status(records.engine, "delivered", 1))
            [row] = await rows(records.engine)
        finally:
            await sender.close()
            await records.close()
        assert [r.id for r in receiver.received] == [row.id] * 3
        assert row.attempts == 3 and row.last_error == "no answer within 0.5 s"
        assert count(metrics, "failed") == 2 and count(metrics, "delivered") == 1
        assert all(r.body == receiver.received[0].body for r in receiver.received)

    asyncio.run(main())


def test_a_receiver_down_then_up_gets_everything_in_order(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = Receiver()  # its port refuses connections until it starts

    async def main() -> None:
        settings = settings_for(database_url, tmp_path, [down.url()])
        records = CallRecords(settings)
        await records.start()
        sender = WebhookSender.for_records(records)
        await sender.start()
        try:
            run_calls(records, ["call-1", "call-2"])
            assert await records.flush()
            engine = records.engine
            assert engine is not None

            async def retried() -> bool:
                heads = [r for r in await rows(engine) if r.seq == 0]
                return len(heads) == 2 and all(r.attempts >= 4 for r in heads)

            await until(retried)
            found = await rows(engine)
            assert all(r.status == "pending" for r in found)
            assert all(r.attempts == 0 for r in found if r.seq > 0)  # held back in order
            assert "ConnectError" in found[0].last_error

            async def counted() -> bool:
                return sender.status()["pending"] == len(found)

            await until(counted)  # the backlog figures of /healthz, refreshed each poll
            down.start()
            await until(all_status(engine, "delivered", 2 * len(TYPES)))
            stored = await rows(engine)
        finally:
            await sender.close()
            await records.close()
            down.stop()
        for key, seqs in in_seq_order(down, stored).items():
            assert seqs == list(range(len(TYPES))), key
        # One line about the failing receiver, not one per attempt.
        failing = [r for r in caplog.records if "failing" in r.getMessage()]
        assert len(failing) == 1 and f"127.0.0.1:{down.port}/hooks" in failing[0].getMessage()
        assert not [r for r in caplog.records if r.name == "httpx"]  # nor httpx's per request

    with caplog.at_level(logging.INFO):
        asyncio.run(main())


# -- dead letters and the API ----------------------------------------------------------------------
def test_old_failures_are_dead_listed_by_the_api_and_retried_from_it(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async def main() -> None:
        settings = settings_for(database_url, tmp_path, [receiver.url()],
                                max_age_h=1.0 / 3600)  # fmt: skip
        settings.api_token = "s3cret"
        metrics = GatewayMetrics()
        records = CallRecords(settings, metrics)
        await records.start()
        receiver.answer = lambda got, n: (503, 0.0)
        sender = WebhookSender.for_records(records, metrics, poll_s=0.1)
        await sender.start()
        app = FastAPI()
        app.include_router(webhooks_router)
        app.state.gateway = SimpleNamespace(settings=settings, records=records)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                headers={"authorization": "Bearer s3cret"})  # fmt: skip
        try:
            run_calls(records, ["call-1"])
            assert await records.flush()
            assert records.engine is not None
            await until(all_status(records.engine, "dead", len(TYPES)))
            assert count(metrics, "dead") == len(TYPES)
            # Dead rows do not hold the call's later events back: each was tried in turn.
            assert [r.type for r in receiver.received][-len(TYPES) + 1 :] == TYPES[1:]

            async def counted() -> bool:
                return sender.status()["dead"] == len(TYPES)

            await until(counted)
            assert (await api.get("/v1/webhooks/deliveries", headers={"authorization": ""})
                    ).status_code == 401  # fmt: skip
            unauthorized = await api.get("/v1/webhooks/deliveries",
                                         headers={"authorization": "Bearer nope"})  # fmt: skip
            assert unauthorized.status_code == 401
            assert unauthorized.headers["www-authenticate"] == "Bearer"
            pages, cursor = [], None
            while True:
                params = {"status": "dead", "call_id": "call-1", "limit": 4}
                answer = await api.get(
                    "/v1/webhooks/deliveries",
                    params={**params, **({"cursor": cursor} if cursor else {})},
                )
                assert answer.status_code == 200
                pages.append(answer.json()["deliveries"])
                cursor = answer.json()["next_cursor"]
                if cursor is None:
                    break
            listed = [d for page in pages for d in page]
            assert [len(p) for p in pages] == [4, 2]
            assert sorted(d["seq"] for d in listed) == list(range(len(TYPES)))
            first = next(d for d in listed if d["seq"] == 0)
            assert first["type"] == "call.started" and first["status"] == "dead"
            assert first["attempts"] >= 2 and first["last_error"].startswith("HTTP 503")
            assert first["created_at"].endswith("Z") and first["delivered_at"] is None
            none = await api.get("/v1/webhooks/deliveries", params={"status": "delivered"})
            assert none.json() == {"deliveries": [], "next_cursor": None}
            bad = await api.get("/v1/webhooks/deliveries", params={"status": "lost"})
            assert bad.status_code == 422
            assert (await api.get("/v1/webhooks/deliveries", params={"cursor": "x"})
                    ).status_code == 400  # fmt: skip

            receiver.answer = lambda got, n: (200, 0.0)
            retried = await api.post(f"/v1/webhooks/deliveries/{first['id']}/retry")
            assert retried.status_code == 202 and retried.json()["status"] == "pending"
            await until(lambda: _status_is(records.engine, first["id"], "delivered"))
            assert receiver.received[-1].id == first["id"]
            again = await api.post(f"/v1/webhooks/deliveries/{first['id']}/retry")
            assert again.status_code == 409
            unknown = await api.post("/v1/webhooks/deliveries/msg_nope/retry")
            assert unknown.status_code == 404
            delivered = await api.get("/v1/webhooks/deliveries", params={"status": "delivered"})
            assert [d["id"] for d in delivered.json()["deliveries"]] == [first["id"]]
            assert delivered.json()["deliveries"][0]["delivered_at"].endswith("Z")
        finally:
            await api.aclose()
            await sender.close()
            await records.close()

    asyncio.run(main())


async def _status_is(engine: Any, delivery_id: str, status: str) -> bool:
    return [r.status for r in await rows(engine, id=delivery_id)] == [status]


# -- several gateways on one database ------------------------------------------------------------
def test_two_senders_on_one_database_never_send_a_delivery_twice(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async def main() -> None:
        settings = settings_for(database_url, tmp_path, [receiver.url()], concurrency=4)
        records = CallRecords(settings)
        await records.start()
        receiver.answer = lambda got, n: (200, 0.01)
        calls = [f"call-{n}" for n in range(12)]
        run_calls(records, calls)
        assert await records.flush()
        engine_b = await open_database(settings.database)
        assert records.engine is not None
        metrics_a, metrics_b = GatewayMetrics(), GatewayMetrics()
        sender_a = WebhookSender.for_records(records, metrics_a)
        sender_b = WebhookSender(engine_b, settings.webhooks, gateway="gw-b", metrics=metrics_b)
        await asyncio.gather(sender_a.start(), sender_b.start())
        try:
            await until(all_status(records.engine, "delivered", len(calls) * len(TYPES)), 60)
            stored = await rows(records.engine)
        finally:
            await asyncio.gather(sender_a.close(), sender_b.close())
            await engine_b.dispose()
            await records.close()
        ids = receiver.ids()
        assert sorted(ids) == sorted(r.id for r in stored)  # each delivery exactly once
        assert count(metrics_a, "delivered") > 0 and count(metrics_b, "delivered") > 0
        assert receiver.overlaps == []
        for key, seqs in in_seq_order(receiver, stored).items():
            assert seqs == list(range(len(TYPES))), key

    asyncio.run(main())


def test_a_dead_gateways_lease_runs_out_and_its_own_restart_takes_it_back(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async def main() -> None:
        settings = settings_for(database_url, tmp_path, [receiver.url()])
        records = CallRecords(settings)
        await records.start()
        for cid in ("call-1", "call-2"):
            recorder, _ = records.open_call(cid, "ws")
            recorder.opened({})
        assert await records.flush()
        engine = records.engine
        assert engine is not None
        # Two gateways claimed a row each, then died mid-attempt.
        now = utc_now()
        lease_ends = now + timedelta(seconds=1.0)
        [gone] = await outbox.claim(engine, "gw-gone", now, lease_ends, 1)
        [mine] = await outbox.claim(engine, "gw-a", now, now + timedelta(hours=1), 1)
        assert {gone.call_id, mine.call_id} == {"call-1", "call-2"}
        assert await outbox.claim(engine, "gw-b", now, now, 5) == []  # both leased
        # This gateway restarts: its own lease is taken back at once, the other runs out.
        sender = WebhookSender.for_records(records)
        await sender.start()
        try:
            await until(all_status(engine, "delivered", 2))
        finally:
            await sender.close()
            await records.close()
        at = {r.id: r.at for r in receiver.received}
        assert sorted(at) == sorted([gone.id, mine.id])
        assert at[gone.id] >= lease_ends.timestamp()  # not while the dead gateway held it

    asyncio.run(main())
