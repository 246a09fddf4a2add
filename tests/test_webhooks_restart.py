"""Webhooks survive what happens in the field: the receiver is down for a minute, and in
between the gateway is killed (SIGKILL, one call still running) and started again.
Afterwards every event has been delivered, in order per call, none twice under different
ids, and the call the kill cut off ends as `gateway_lost`. One gateway on a SQLite file and
one on PostgreSQL go through the same minute side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from tests import gateway_client
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.postgres import fresh_database
from tests.webhook_receiver import SECRET, Receiver

RECEIVER_DOWN_S = 60.0


def env_for(name: str, url: str, database: str | None) -> dict[str, str]:
    env = {
        "VOICEBOT_GATEWAY_ID": name,  # the same gateway after the restart (a new port)
        "VOICEBOT_WEBHOOKS__URLS": json.dumps([url]), "VOICEBOT_WEBHOOKS__SECRET": SECRET,
        "VOICEBOT_WEBHOOKS__BACKOFF_BASE_S": "0.5", "VOICEBOT_WEBHOOKS__BACKOFF_MAX_S": "4",
        "VOICEBOT_ENGINES__STT_MODEL": "tiny.en", "VOICEBOT_ENGINES__TTS": "espeak",
        "VOICEBOT_SIP_PORT": "0",
    }  # fmt: skip
    if database:
        env["VOICEBOT_DATABASE_URL"] = database
    return env


def one_call(gw: Gateway, audio, seconds: float | None = None) -> None:  # type: ignore[no-untyped-def]
    """A call to its end, or (`seconds`) one left running in the background that long."""
    if seconds is None:
        asyncio.run(gateway_client.call(gw.ws, audio))
        return

    def run() -> None:
        with contextlib.suppress(Exception):  # the gateway is killed under it
            asyncio.run(gateway_client.call(gw.ws, audio))

    threading.Thread(target=run, daemon=True).start()
    time.sleep(seconds)


def test_receiver_down_gateway_killed_and_restarted_nothing_lost(
    tmp_path: Path, postgres_url: str, voice  # type: ignore[no-untyped-def]
) -> None:
    receiver = Receiver()  # its port is taken now; nothing listens until it starts
    down_since = time.monotonic()
    question = place(6.0, (0.5, voice.synthesize_sync("What is the balance on my account?")))
    long_call = place(20.0, (0.5, voice.synthesize_sync("Hello, I have a question.")))
    sites = {
        "sqlite": (tmp_path / "sqlite", None),
        "postgresql": (tmp_path / "pg", fresh_database(postgres_url)),
    }
    for name, (work, database) in sites.items():
        work.mkdir()
        with gateway(work, **env_for(name, receiver.url(f"/{name}"), database)) as gw:
            one_call(gw, question)  # ends normally
            one_call(gw, long_call, seconds=4.0)  # still running when the gateway dies
            gw.proc.kill()
            gw.proc.wait(10)
    restarted = contextlib.ExitStack()
    for name, (work, database) in sites.items():
        restarted.enter_context(gateway(work, **env_for(name, receiver.url(f"/{name}"),
                                                        database)))  # fmt: skip
    with restarted:
        time.sleep(max(0.0, RECEIVER_DOWN_S - (time.monotonic() - down_since)))
        receiver.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ended = [r for r in receiver.received if r.type == "call.ended"]
                if len({(r.path, r.call_id) for r in ended}) >= 4:
                    break
                time.sleep(0.5)
            time.sleep(2.0)  # anything still coming would be a duplicate
        finally:
            receiver.stop()
    assert receiver.rejected == 0
    calls: dict[tuple[str, str], list] = defaultdict(list)
    for got in receiver.received:
        calls[(got.path, got.call_id)].append(got)
    assert sorted({path for path, _ in calls}) == ["/postgresql", "/sqlite"]
    assert len(calls) == 4, sorted(calls)
    for (path, call_id), got in calls.items():
        # At least once: a delivery may repeat, always under its own id.
        by_id: dict[str, bytes] = {}
        for r in got:
            assert by_id.setdefault(r.id, r.body) == r.body, "one id, two bodies"
        bodies = defaultdict(set)
        for r in got:
            bodies[r.body].add(r.id)
        assert all(len(ids) == 1 for ids in bodies.values()), "one event under two ids"
        first_seen = list(dict.fromkeys(r.id for r in got))
        types = [next(r.type for r in got if r.id == i) for i in first_seen]
        stamps = [datetime.fromisoformat(json.loads(next(
            r.body for r in got if r.id == i))["timestamp"].replace("Z", "+00:00"))
            for i in first_seen]  # fmt: skip
        assert stamps == sorted(stamps), "delivered out of the order the events happened"
        assert types[0] == "call.started" and types[1] == "call.answered"
        assert types[-1] == "call.ended" and types.count("call.ended") == 1, types
        ended = json.loads(next(r.body for r in got if r.type == "call.ended"))["data"]
        if "turn.bot" in types:  # the call that ended before the kill
            assert types.index("turn.user") < types.index("turn.bot")
            assert ended["reason"] != "gateway_lost"
        else:
            assert ended["reason"] == "gateway_lost", (path, call_id, types)
    assert sorted(json.loads(next(r.body for r in g if r.type == "call.ended"))["data"]
                  ["reason"] == "gateway_lost" for g in calls.values()) == [False, False,
                                                                             True, True]

