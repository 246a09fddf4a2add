"""Scale-out over HTTP (issue 15): three gateways (tests/cluster.py, on 127.0.0.2-4, one
PostgreSQL) behind HAProxy running deploy/haproxy/haproxy.cfg as shipped (its backends
filled from the environment), WebSocket callers on the proxy's one address.

One test, in phases, on one cluster: (1) nine short calls, three at a time, spread over the
three gateways by leastconn and each hears the bot; (2) a gateway drained through the proxy
(`POST /v1/admin/drain` with `X-Voicebot-Gateway`): the proxy marks it down within its
check interval and sends it no new call, its running call ends normally, it exits 0;
(3) a live call hung up through the proxy from the wrong gateway (409 naming the owner, then
routed by the header), and a gateway SIGKILLed mid-call: another gateway closes its call as
`gateway_lost` after the heartbeat timeout and exactly one call.ended webhook goes out for
it; (4) both restarted, each takes calls again. At the end every record of all three
gateways is in the one database, ended, with its call.started and one call.ended webhook
received (verified signatures).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.cluster import Cluster, cluster
from tests.gateway_client import Received, call
from tests.postgres import fresh_database
from tests.servers import free_port
from tests.webhook_receiver import SECRET, Receiver

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
HEARTBEAT_S, HEARTBEAT_TIMEOUT_S = 1.0, 4.0
GREETING = "Hello, thanks for calling the clinic."
RATE = 16000

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="Debian's haproxy is not installed (make setup)"
)


@contextlib.contextmanager
def haproxy(gws: Cluster, log_path: Path) -> Iterator[tuple[str, str]]:
    """HAProxy on deploy/haproxy/haproxy.cfg in the foreground; yields (proxy, stats) base
    URLs once every gateway is UP in both backends; stopped after."""
    port, stats_port = free_port(), free_port()
    env = {**os.environ, "LB_BIND": f"127.0.0.1:{port}", "LB_STATS": f"127.0.0.1:{stats_port}",
           **{f"GW{i + 1}": f"{m.address}:{m.http_port}" for i, m in enumerate(gws.members)}}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(CONFIG)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    stats = f"http://127.0.0.1:{stats_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"haproxy exited:\n{log_path.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                states = server_states(stats)
                if len(states) == 6 and all(s == "UP" for s in states.values()):
                    break
            assert time.monotonic() < deadline, f"backends not UP: {log_path.read_text()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", stats
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def server_states(stats: str) -> dict[tuple[str, str], str]:
    """(backend, server) -> status ("UP", "DOWN", "UP 1/2", ...) from the stats CSV."""
    text = httpx.get(f"{stats}/stats;csv", timeout=2).text.lstrip("# ")
    return {(row["pxname"], row["svname"]): row["status"]
            for row in csv.DictReader(io.StringIO(text))
            if row["svname"] not in ("FRONTEND", "BACKEND")}  # fmt: skip


def silence(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.normal(0, 30, int(RATE * seconds))).astype(np.int16)  # line noise, no speech


def call_id(got: Received) -> str:
    started = got.of("call_started")
    assert started, f"no call_started event (close {got.close_code} {got.close_reason})"
    return str(started[0]["call_id"])


def bot_seconds(got: Received) -> float:
    return sum(len(a) for _, a in got.audio) / RATE


def records(proxy: str, **params: Any) -> dict[str, dict[str, Any]]:
    """Every record in the shared store, read through the proxy (any gateway answers)."""
    page = httpx.get(f"{proxy}/v1/calls", params={"limit": 500, **params}, timeout=10)
    page.raise_for_status()
    return {c["id"]: c for c in page.json()["calls"]}


def wait_for(what: str, check: Any, timeout_s: float, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def test_three_gateways_behind_haproxy(postgres_url: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    env = {
        "VOICEBOT_AGENT__GREETING": GREETING,  # bot audio in every call without STT work
        "VOICEBOT_RECORDS__RECORDING": "false",
        "VOICEBOT_RECORDS__HEARTBEAT_S": str(HEARTBEAT_S),
        "VOICEBOT_RECORDS__HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        "VOICEBOT_WEBHOOKS__URLS": f'["{receiver.url()}"]',
        "VOICEBOT_WEBHOOKS__SECRET": SECRET,
        "VOICEBOT_WEBHOOKS__TIMEOUT_S": "2",  # a dead sender's leases run out in 7 s
    }
    figures: dict[str, Any] = {}
    try:
        with cluster(tmp_path, fresh_database(postgres_url), sip=False, **env) as gws, \
                haproxy(gws, tmp_path / "haproxy.log") as (proxy, stats):  # fmt: skip
            ws = proxy.replace("http://", "ws://") + "/ws"
            owner = {m.name: m for m in gws.members}

            # (1) Nine calls, three at a time: leastconn spreads them, each hears the bot.
            spread: Counter[str] = Counter()
            for _ in range(3):
                got = asyncio.run(_calls(ws, [silence(2.5)] * 3))
                recs = records(proxy)
                for g in got:
                    assert g.close_code == 1000, (g.close_code, g.close_reason)
                    assert bot_seconds(g) >= 0.5, bot_seconds(g)
                    spread[recs[call_id(g)]["gateway"]] += 1
            figures["spread"] = dict(spread)
            assert sorted(spread) == ["gw1", "gw2", "gw3"] and min(spread.values()) >= 2, spread

            # (2) Drain gw3 through the proxy while it carries a call.
            async def phase_drain() -> tuple[list[Received], float, list[Received]]:
                running = [asyncio.create_task(call(ws, silence(7.0))) for _ in range(3)]
                live = await _wait_live(proxy, 3, set(records(proxy)))
                assert sorted(c["gateway"] for c in live.values()) == ["gw1", "gw2", "gw3"]
                t0 = time.monotonic()
                async with httpx.AsyncClient() as client:
                    drain = await client.post(f"{proxy}/v1/admin/drain",
                                              headers={"X-Voicebot-Gateway": "gw3"})  # fmt: skip
                assert drain.status_code == 202 and drain.json()["active_calls"] == 1, drain.text
                while server_states(stats)[("calls", "gw3")] != "DOWN":
                    assert time.monotonic() - t0 < 5, server_states(stats)
                    await asyncio.sleep(0.05)
                marked_down_s = time.monotonic() - t0
                after = await _calls(ws, [silence(1.5)] * 3)
                return await asyncio.gather(*running), marked_down_s, after

            during, figures["drain_marked_down_s"], after = asyncio.run(phase_drain())
            assert figures["drain_marked_down_s"] <= 3.5  # inter 1s fall 2, plus a check
            recs = records(proxy)
            for g in during + after:
                assert g.close_code == 1000 and bot_seconds(g) >= 0.5, (g.close_code,
                                                                      g.close_reason)  # fmt: skip
            assert {recs[call_id(g)]["gateway"] for g in after} <= {"gw1", "gw2"}
            drained = [recs[call_id(g)] for g in during if recs[call_id(g)]["gateway"] == "gw3"]
            assert len(drained) == 1 and drained[0]["end_reason"] != "gateway_lost"
            assert owner["gw3"].wait_exit(30) == 0, owner["gw3"].log()[-2000:]

            # (3) Two calls on gw1 and gw2; gw1's is hung up through the proxy from the
            # wrong gateway first; gw2 is killed during its call.
            async def phase_kill() -> tuple[list[Received], str, float]:
                running = [asyncio.create_task(call(ws, silence(s))) for s in (6.0, 10.0)]
                live = await _wait_live(proxy, 2, set(records(proxy)))
                by_gateway = {c["gateway"]: i for i, c in live.items()}
                assert sorted(by_gateway) == ["gw1", "gw2"], live
                await asyncio.sleep(1.5)  # both hear the bot's greeting
                async with httpx.AsyncClient() as client:
                    url = f"{proxy}/v1/calls/{by_gateway['gw1']}"
                    wrong = await client.delete(url, headers={"X-Voicebot-Gateway": "gw2"})
                    assert wrong.status_code == 409, wrong.text
                    assert wrong.headers["x-voicebot-gateway"] == "gw1", wrong.headers
                    right = await client.delete(url, headers={
                        "X-Voicebot-Gateway": wrong.headers["x-voicebot-gateway"]})
                    assert right.status_code == 202, right.text
                await asyncio.sleep(1.0)  # gw2's call runs on, its record beating
                assert owner["gw2"].kill() == -signal.SIGKILL
                killed_at = time.monotonic()
                return await asyncio.gather(*running), by_gateway["gw2"], killed_at

            got, lost_id, killed_at = asyncio.run(phase_kill())
            lost = wait_for("gw1 to close gw2's call", lambda: (
                records(proxy).get(lost_id, {}).get("end_reason") == "gateway_lost"
            ), HEARTBEAT_TIMEOUT_S * 3)  # fmt: skip
            assert lost
            figures["gateway_lost_after_kill_s"] = round(time.monotonic() - killed_at, 1)
            assert bot_seconds(got[0]) >= 0.5 and bot_seconds(got[1]) >= 0.5
            hung_up = next(g for g in got if call_id(g) != lost_id)
            assert records(proxy)[call_id(hung_up)]["end_reason"] == "api_hangup"

            # (4) The drained and the killed gateway restarted: HAProxy sends them calls again.
            t0 = time.monotonic()
            for name in ("gw2", "gw3"):
                owner[name].start()
            for name in ("gw2", "gw3"):
                owner[name].wait_ready()
            wait_for("gw2 and gw3 UP again", lambda: all(
                server_states(stats)[("calls", n)] == "UP" for n in ("gw2", "gw3")), 10)
            figures["restart_to_up_s"] = round(time.monotonic() - t0, 1)
            back = asyncio.run(_calls(ws, [silence(2.0)] * 3))
            recs = records(proxy)
            assert sorted(recs[call_id(g)]["gateway"] for g in back) == ["gw1", "gw2", "gw3"]
            assert all(g.close_code == 1000 and bot_seconds(g) >= 0.5 for g in back)

            # Nothing lost: every call of all three gateways in the one database, ended,
            # with its webhooks, exactly one call.ended each (the lost one's by a survivor).
            # A call's end row is written by its gateway's records writer just after the call
            # closes, so the last calls' rows may trail their WebSocket close (seen under load).
            wait_for("the last calls' end rows",
                     lambda: all(c["ended_at"] for c in records(proxy).values()), 15, every_s=0.3)
            final = records(proxy)
            assert len(final) == 9 + 3 + 3 + 2 + 3, sorted(final)
            assert {c["gateway"] for c in final.values()} == {"gw1", "gw2", "gw3"}
            assert all(c["ended_at"] for c in final.values()), [
                c for c in final.values() if not c["ended_at"]]
            assert [i for i, c in final.items() if c["end_reason"] == "gateway_lost"] == [lost_id]

            def webhooks_complete() -> bool:
                kinds = {(r.call_id, r.type) for r in receiver.received}
                return all((i, t) in kinds for i in final for t in ("call.started", "call.ended"))

            wait_for("every call's webhooks", webhooks_complete, 30, every_s=0.3)
            time.sleep(2 * HEARTBEAT_S)  # room for a duplicate to show up
            ended: dict[str, set[str]] = {}
            reasons: dict[str, Any] = {}
            for r in list(receiver.received):
                if r.type == "call.ended":
                    ended.setdefault(r.call_id, set()).add(r.id)
                    reasons[r.call_id] = json.loads(r.body)["data"]["reason"]
            assert {i: len(ids) for i, ids in ended.items()} == {i: 1 for i in final}
            assert reasons == {i: c["end_reason"] for i, c in final.items()}
            assert receiver.rejected == 0
            figures["webhooks_received"] = len(receiver.received)
            print("\nscale-out over HAProxy:", figures)
    finally:
        receiver.stop()


async def _calls(ws: str, audios: list[np.ndarray]) -> list[Received]:
    return list(await asyncio.gather(*(call(ws, a) for a in audios)))


async def _wait_live(proxy: str, n: int, seen: set[str]) -> dict[str, dict[str, Any]]:
    """Until `n` calls not in `seen` (earlier phases') are live in the records."""
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            page = await client.get(f"{proxy}/v1/calls", params={"status": "live"})
            live = {c["id"]: c for c in page.json()["calls"] if c["id"] not in seen}
            if len(live) >= n:
                return live
            await asyncio.sleep(0.1)
    raise AssertionError(f"not {n} live calls: {live}")
