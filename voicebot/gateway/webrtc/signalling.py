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
from voicebot.agent.session import CallSession
from voicebot.calls.leg import Leg, LegSetupError, run_leg
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia
from voicebot.calls.pacing import PacedFrames
from voicebot.config.settings import WebRtcSettings
from voicebot.gateway.webrtc.media import BotAudioTrack, feed_remote_track
from voicebot.gateway.webrtc.receive_buffer import release_on_arrival

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
        self._pending.append(event.to_json())
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
    """Every WebRTC call of the process: one peer connection and one `WebRtcLeg` each."""

    def __init__(self, manager: CallManager, settings: WebRtcSettings) -> None:
        self.manager = manager
        self.settings = settings
        self.peers: set[RTCPeerConnection] = set()
        self._tasks: set[asyncio.Task[str | None]] = set()
        if settings.loopback_only:
            use_loopback_only()

    def configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.settings.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    async def answer(self, body: bytes, client: dict[str, object] | None = None) -> dict[str, str]:
        """The SDP answer to an offer; the call then runs on its own task. Raises
        OfferError (a bad offer 400/413, refused 503) instead. `client`: what the HTTP
        request said of the caller (address, user agent), kept in the call's record."""
        leg = WebRtcLeg(self, parse_offer(body, self.settings.loopback_only), client or {})
        task = asyncio.create_task(run_leg(self.manager, leg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step runs none of its code: answer from here.
        task.add_done_callback(lambda _: leg.unanswered())
        return await leg.answer

    async def close_peer(self, pc: RTCPeerConnection) -> None:
        self.peers.discard(pc)
        with contextlib.suppress(Exception):
            await pc.close()

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close_peer(pc) for pc in list(self.peers)))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class WebRtcLeg(Leg):
    """One browser call: Opus in and out through aiortc, events on the data channel."""

    transport = "webrtc"

    def __init__(
        self, gateway: WebRtcGateway, offer: RTCSessionDescription, client: dict[str, object]
    ) -> None:
        self.gateway = gateway
        self.offer = offer
        self.client = client
        self.answer: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.bot = BotAudioTrack()
        self.events = EventChannel()
        frames = gateway.manager.metrics.input_frames
        self.paced = PacedFrames(
            underruns=frames.labels("webrtc", "underrun"),
            dropped=frames.labels("webrtc", "dropped"),
        )
        self.pc: RTCPeerConnection | None = None
        self._call_id: str = ""
        self._media_started = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self._session: CallSession | None = None

    async def refuse(self, refusal: CallRefusedError) -> None:
        reason = f"try again later: {refusal.reason}"
        self.answer.set_exception(OfferError(503, reason, {"Retry-After": "5"}))

    async def open(self, call_id: str) -> LegMedia:
        self._call_id = call_id
        self.pc = pc = RTCPeerConnection(self.gateway.configuration())
        self.gateway.peers.add(pc)
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        pc.addTrack(self.bot)
        try:
            await pc.setRemoteDescription(self.offer)
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    release_on_arrival(transceiver.receiver)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            reason = f"cannot answer this offer: {type(exc).__name__}: {exc}"
            self.answer.set_exception(OfferError(400, reason))
            raise LegSetupError(reason) from exc
        self.answer.set_result({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
        return LegMedia(self.bot, subscribers=[self.events], info=dict(self.client))

    async def run(self, session: CallSession) -> str:
        self._session = session
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            self.paced.close()
        timeout = self.gateway.settings.connect_timeout_s
        try:
            await asyncio.wait_for(self._media_started.wait(), timeout)
        except TimeoutError:
            log.warning("call %s: no media within %.0f s", self._call_id, timeout)
            self.paced.close()
        return await session.run(self.paced)

    def unanswered(self) -> None:
        """The call ended before an answer (shutdown, or a bug in set-up): say so."""
        if self.answer.done():
            return
        if self.gateway.manager.draining:
            self.answer.set_exception(OfferError(503, "try again later: shutting down",
                                                 {"Retry-After": "5"}))  # fmt: skip
        else:
            self.answer.set_exception(OfferError(500, "server error"))

    async def close(self, reason: str | None) -> None:
        self.bot.stop()
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(BaseException):
                await self._feeder
        if self.pc is not None:
            await self.gateway.close_peer(self.pc)

    # -- peer connection events -----------------------------------------------------------
    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == "events":
            self.events.attach(channel)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._feeder is not None:
            return
        self._feeder = asyncio.create_task(feed_remote_track(track, self.paced, self._call_id))
        self._media_started.set()

    async def _on_connection_state(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            self.paced.close()
            if self._session is not None:
                self._session.end(f"webrtc_{self.pc.connectionState}")
