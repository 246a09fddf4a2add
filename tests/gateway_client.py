"""A WebSocket caller for gateway tests and benchmarks: streams audio in real time and
records everything the server sends, with arrival times."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

FRAME = 320  # 20 ms at 16 kHz


@dataclass
class Received:
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival s, pcm)
    clears: list[float] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def audio_between(self, start: float, end: float) -> int:
        return sum(len(a) for t, a in self.audio if start <= t < end)


async def call(
    url: str,
    audio: np.ndarray,
    *,
    sample_rate: int = 16000,
    send_start: bool = True,
    chunk_ms: int = 20,
    linger_s: float = 0.0,
    headers: dict[str, str] | None = None,
) -> Received:
    """Stream `audio` (int16 at `sample_rate`) at real time, then linger, then stop."""
    got = Received()
    t0 = time.monotonic()
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:

        async def receive() -> None:
            try:
                async for message in ws:
                    now = time.monotonic() - t0
                    if isinstance(message, bytes):
                        got.audio.append((now, np.frombuffer(message, "<i2").copy()))
                    else:
                        data = json.loads(message)
                        if data["type"] == "clear":
                            got.clears.append(now)
                        else:
                            data["_arrival"] = now
                            got.events.append(data)
            except websockets.ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        if send_start:
            await ws.send(json.dumps({"type": "start", "sample_rate": sample_rate}))
        step = sample_rate * chunk_ms // 1000
        for k, i in enumerate(range(0, len(audio), step)):
            delay = t0 + k * chunk_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await ws.send(audio[i : i + step].astype("<i2").tobytes())
            except websockets.ConnectionClosed:
                break
        if linger_s:
            await asyncio.sleep(linger_s)
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, 30)
        got.close_code = ws.close_code
        got.close_reason = ws.close_reason or ""
    return got


async def expect_close(url: str, *messages: bytes | str, headers=None) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Send messages; return the server's close code and reason."""
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        try:
            for m in messages:
                await ws.send(m)
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass
        return ws.close_code or 0, ws.close_reason or ""
