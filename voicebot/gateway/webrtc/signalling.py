"""`POST /webrtc/offer`: one RTCPeerConnection per call, non-trickle offer/answer.

The answer is returned after ICE gathering completes (aiortc gathers inside
setLocalDescription), so the browser needs no further signalling (RFC 8829 "non-trickle").
Every way a call can end — the bot hangs up, the browser leaves, ICE fails, shutdown —
closes the peer connection and forgets it, so nothing leaks across calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from voicebot.agent.events import Event
from voicebot.config.settings import WebRtcSettings
from voicebot.gateway.calls import CallManager, CallRefusedError
from voicebot.gateway.pacing import PacedFrames
from voicebot.gateway.webrtc.media import BotAudioTrack, feed_remote_track

log = logging.getLogger("voicebot.gateway.webrtc")

MAX_SDP_BYTES = 64 * 1024
_SDP_LINE = re.compile(r"^[a-z]=.*$")
_LOOPBACK_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (127\.\d+\.\d+\.\d+|::1) ", re.I)


class OfferError(Exception):
    """A bad offer: HTTP status and a reason for the caller."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def use_loopback_only() -> None:
    # aioice leaves 127.0.0.1 out of host candidates; tests and single-host set-ups need it
    # (and nothing else), so traffic never leaves the machine.
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


def parse_offer(body: bytes, loopback_only: bool) -> RTCSessionDescription:
    if len(body) > MAX_SDP_BYTES:
        raise OfferError(413, f"offer larger than {MAX_SDP_BYTES} bytes")
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OfferError(400, 'body must be JSON: {"sdp": ..., "type": "offer"}') from exc
    if not isinstance(data, dict) or not isinstance(data.get("sdp"), str):
        raise OfferError(400, "body must be a JSON object with an 'sdp' string")
    if data.get("type") != "offer":
        raise OfferError(400, f"type must be 'offer', not {data.get('type')!r}")
    sdp = data["sdp"].replace("\r\n", "\n").replace("\n", "\r\n")
    lines = [line for line in sdp.split("\r\n") if line]
    # RFC 4566 section 5: "v=0" first, then <type>=<value> lines with one-letter types.
    if not lines or lines[0] != "v=0":
        raise OfferError(400, "malformed SDP: it must begin with v=0 (RFC 4566 section 5)")
    bad = next((line for line in lines if not _SDP_LINE.match(line)), None)
    if bad is not None:
        raise OfferError(400, f"malformed SDP line {bad[:60]!r}")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises assorted errors on malformed SDP
        raise OfferError(400, f"malformed SDP: {type(exc).__name__}: {exc}") from exc
    kinds = [m.kind for m in parsed.media]
    if "audio" not in kinds:
        raise OfferError(400, f"offer has no audio m-line (has: {', '.join(kinds) or 'none'})")
    if loopback_only:
        sdp = "\r\n".join(
            line
            for line in sdp.split("\r\n")
            if not line.startswith("a=candidate:") or _LOOPBACK_CANDIDATE.match(line)
        )
    return RTCSessionDescription(sdp=sdp, type="offer")


class EventChannel:
    """Call events on the browser's `events` data channel; held until it opens."""

    def __init__(self) -> None:
        self.channel: RTCDataChannel | None = None
        self._pending: list[str] = []

    def attach(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def __call__(self, event: Event) -> None:
        self._pending.append(json.dumps(event))
        if self.channel is not None and self.channel.readyState == "open":
            self._flush()

    def _flush(self) -> None:
        if self.channel is None:
            return
        pending, self._pending = self._pending, []
        for message in pending:
            with contextlib.suppress(Exception):  # channel closing under us: events are lost
                self.channel.send(message)


class WebRtcGateway:
    def __init__(self, manager: CallManager, settings: WebRtcSettings) -> None:
        self.manager = manager
        self.settings = settings
        self.peers: set[RTCPeerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.loopback_only:
            use_loopback_only()

    def _configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.settings.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    async def answer(self, body: bytes) -> dict[str, str]:
        offer = parse_offer(body, self.settings.loopback_only)
        try:
            self.manager.admit("webrtc")
        except CallRefusedError as exc:
            raise OfferError(503, f"try again later: {exc.reason}", {"Retry-After": "5"}) from exc

        pc = RTCPeerConnection(self._configuration())
        self.peers.add(pc)
        bot = BotAudioTrack()
        events = EventChannel()
        paced = PacedFrames()
        started = asyncio.Event()
        state: dict[str, Any] = {}

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == "events":
                events.attach(channel)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio" or "feeder" in state:
                return
            state["feeder"] = asyncio.create_task(
                feed_remote_track(track, paced, state["call"].call_id)
            )
            started.set()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                paced.close()
                if "call" in state:
                    state["call"].session.end(f"webrtc_{pc.connectionState}")

        try:
            state["call"] = self.manager.open("webrtc", bot, [events])
        except CallRefusedError as exc:
            await self._close(pc)
            raise OfferError(503, f"try again later: {exc.reason}", {"Retry-After": "5"}) from exc
        pc.addTrack(bot)
        try:
            await pc.setRemoteDescription(offer)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            self.manager.discard(state["call"])
            await self._close(pc)
            raise OfferError(400, f"cannot answer this offer: {type(exc).__name__}: {exc}") from exc
        task = asyncio.create_task(self._run_call(pc, state, paced, started, bot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def _run_call(self, pc, state, paced, started, bot) -> None:  # type: ignore[no-untyped-def]
        handle = state["call"]
        try:
            try:
                await asyncio.wait_for(started.wait(), self.settings.connect_timeout_s)
            except TimeoutError:
                log.warning("call %s: no media within %.0f s", handle.call_id,
                            self.settings.connect_timeout_s)  # fmt: skip
                paced.close()
            await self.manager.run(handle, paced)
        finally:
            bot.stop()
            feeder = state.get("feeder")
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(BaseException):
                    await feeder
            await self._close(pc)

    async def _close(self, pc: RTCPeerConnection) -> None:
        self.peers.discard(pc)
        with contextlib.suppress(Exception):
            await pc.close()

    async def close_all(self) -> None:
        await asyncio.gather(*(self._close(pc) for pc in list(self.peers)))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
