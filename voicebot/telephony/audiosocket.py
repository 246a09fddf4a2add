"""Asterisk AudioSocket calls (TCP), each one `calls.leg.Leg`.

Asterisk (`AudioSocket(${UUID},host:port)` in the dialplan, `Dial(AudioSocket/host:port/
${UUID})`, or ARI `externalMedia` with `encapsulation=audiosocket`) opens one TCP connection
per call and sends frames of 1 byte kind, 2 bytes big-endian payload length, payload:

    0x00 hang-up (no payload)          0x01 the call's UUID (16 bytes; the first frame)
    0x03 DTMF (1 ASCII byte)           0x10 audio, 8 kHz signed 16-bit little-endian mono
    0x11, 0x12 audio at 16 kHz (the two values Asterisk versions have used for slin16)
    0xff error (payload: an error code byte)

The bot's audio goes back in the kind (and so the rate) the caller's came in, one 20 ms
frame per frame of caller audio the paced input hands the session (real time). AudioSocket
has no "clear": at a barge-in the sink simply stops sending, and nothing is queued beyond
the frame on the wire. Our hang-up is a 0x00 frame, then the socket is closed. Bad input
(an unknown kind, an oversized or truncated frame, no UUID first, silence past
`audiosocket.idle_timeout_s`) ends that connection with one bounded log line, never the
server. A refused call (capacity, shutdown) gets a hang-up and a close: AudioSocket has no
refusal code; refusals are counted in `/healthz` and `voicebot_calls_rejected_total`.
With `audiosocket.lookup_url` set, the call's variables are fetched by its UUID
(`audiosocket_lookup.py`) before the bot greets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid

import numpy as np

from voicebot.agent.session import CallSession
from voicebot.audio.resample import StreamingResampler, from_canonical, to_canonical
from voicebot.calls.leg import Leg, LegSetupError, run_leg
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia, Refusal
from voicebot.calls.pacing import PacedFrames, run_paced
from voicebot.config import Settings
from voicebot.telephony.audiosocket_lookup import lookup_variables

log = logging.getLogger("voicebot.telephony.audiosocket")

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_SLIN = 0x10
KIND_SLIN16_A = 0x11
KIND_SLIN16_B = 0x12
KIND_ERROR = 0xFF
AUDIO_RATES = {KIND_SLIN: 8000, KIND_SLIN16_A: 16000, KIND_SLIN16_B: 16000}
# One second of 16 kHz audio: Asterisk sends 20 ms frames; anything longer is not a peer.
MAX_PAYLOAD = 32000
DTMF_DIGITS = frozenset("0123456789*#ABCD")
# Bot audio waiting in the socket's send buffer at most (a peer not reading: frames dropped).
MAX_UNSENT_BYTES = 64 * 1024


class AudioSocketError(Exception):
    """The peer broke the protocol (or went silent): this connection ends."""


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, bytes] | None:
    """The next frame, or None at a clean end of stream (between frames)."""
    try:
        header = await asyncio.wait_for(reader.readexactly(3), timeout_s)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise AudioSocketError("truncated frame header") from exc
    except TimeoutError as exc:
        raise AudioSocketError(f"nothing received for {timeout_s:g} s") from exc
    kind, length = struct.unpack(">BH", header)
    if kind not in AUDIO_RATES and kind not in (KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_ERROR):
        raise AudioSocketError(f"unknown frame kind 0x{kind:02x}")
    if length > MAX_PAYLOAD:
        raise AudioSocketError(f"frame of {length} bytes > {MAX_PAYLOAD}")
    try:
        payload = await asyncio.wait_for(reader.readexactly(length), timeout_s)
    except asyncio.IncompleteReadError as exc:
        raise AudioSocketError(f"truncated frame: {len(exc.partial)} of {length} bytes") from exc
    except TimeoutError as exc:
        raise AudioSocketError(f"frame payload not received in {timeout_s:g} s") from exc
    return kind, payload


class AudioSocketSink:
    """The bot's frames out, in the kind (rate) of the caller's audio."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.closed = False
        self.dropped = 0
        self.set_kind(KIND_SLIN)

    def set_kind(self, kind: int) -> None:
        self.kind = kind
        self._resampler: StreamingResampler = from_canonical(AUDIO_RATES[kind])

    def write(self, frame: np.ndarray) -> None:
        pcm = self._resampler.process(frame).astype("<i2").tobytes()
        transport = self._writer.transport
        if self.closed or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.dropped += 1  # the peer is not reading: do not build up latency
            return
        self._writer.write(encode_frame(self.kind, pcm))

    def clear(self) -> int:
        # No "clear" on this wire, and nothing queued here: the bot just stops sending.
        return 0


class AudioSocketLeg(Leg):
    """One AudioSocket connection: one call."""

    transport = "audiosocket"

    def __init__(
        self, server: AudioSocketServer, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:  # fmt: skip
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.sink = AudioSocketSink(writer)
        frames = server.manager.metrics.input_frames
        self.paced = PacedFrames(
            underruns=frames.labels(self.transport, "underrun"),
            dropped=frames.labels(self.transport, "dropped"),
        )
        self.session: CallSession | None = None
        self.task: asyncio.Task[object] | None = None
        self.call: str | None = None
        self.uuid: str | None = None
        self._peer_gone = False
        self._kind: int | None = None
        self._resampler: StreamingResampler = to_canonical(8000)

    async def refuse(self, refusal: CallRefusedError) -> None:
        self.server.refused += 1
        log.info("audiosocket call from %s refused: %s", self.peer, refusal.reason)
        await self._hang_up()

    async def open(self, call_id: str) -> LegMedia:
        self.call = call_id
        try:
            first = await read_frame(self.reader, self.server.settings.setup_timeout_s)
        except AudioSocketError as exc:
            self.server.bad_input += 1
            raise LegSetupError(f"from {self.peer}: {exc}") from exc
        if first is None or first[0] != KIND_UUID or len(first[1]) != 16:
            self.server.bad_input += 1
            what = "nothing" if first is None else f"kind 0x{first[0]:02x} ({len(first[1])} bytes)"
            raise LegSetupError(f"from {self.peer}: the first frame must be a UUID, got {what}")
        self.uuid = str(uuid.UUID(bytes=first[1]))
        settings = self.server.settings
        variables: dict[str, str] = {}
        if settings.lookup_url:
            variables = await lookup_variables(
                settings.lookup_url, self.uuid, settings.lookup_timeout_s, call_id=call_id
            )
        info = {"uuid": self.uuid, "from": f"audiosocket:{self.peer}"}
        return LegMedia(self.sink, info=info, variables=variables)

    async def run(self, session: CallSession) -> str:
        self.session = session
        async def read() -> None:
            ending = await self._read(session)
            if ending is not None:  # before the input closes: the reason the call ends with
                session.end(ending)

        reason, _ = await run_paced(session, self.paced, read())
        return reason

    async def close(self, reason: str | None) -> None:
        await self._hang_up()

    async def _hang_up(self) -> None:
        """Our 0x00 (if the peer is still there), then the socket closed."""
        self.sink.closed = True
        writer = self.writer
        with contextlib.suppress(Exception):
            if not self._peer_gone and not writer.transport.is_closing():
                writer.write(encode_frame(KIND_HANGUP))
                await asyncio.wait_for(writer.drain(), 2.0)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)

    # -- the peer's frames ----------------------------------------------------------------
    async def _read(self, session: CallSession) -> str | None:
        """Reads frames into the call until the peer ends it; returns the end reason to
        set (None: the peer hung up, the session's own reason, caller_hangup, stands)."""
        idle_s = self.server.settings.idle_timeout_s
        try:
            while True:
                frame = await read_frame(self.reader, idle_s)
                if frame is None:
                    self._peer_gone = True
                    return None
                kind, payload = frame
                if kind in AUDIO_RATES:
                    self._audio(kind, payload)
                elif kind == KIND_HANGUP:
                    return None
                elif kind == KIND_DTMF:
                    digit = payload[:1].decode("ascii", "replace").upper()
                    if len(payload) == 1 and digit in DTMF_DIGITS:
                        session.dtmf(digit)
                elif kind == KIND_ERROR:
                    code = payload[0] if payload else None
                    log.warning("audiosocket call %s (%s): peer error %s", self.call,
                                self.uuid, code)  # fmt: skip
                    return "peer_error"
                # a repeated UUID frame changes nothing
        except AudioSocketError as exc:
            self.server.bad_input += 1
            log.warning("audiosocket call %s (%s) from %s: %s", self.call, self.uuid,
                        self.peer, str(exc)[:200])  # fmt: skip
            return "protocol_error"
        except (ConnectionError, OSError):
            self._peer_gone = True
            return None

    def _audio(self, kind: int, payload: bytes) -> None:
        if len(payload) % 2:
            raise AudioSocketError(f"audio of {len(payload)} bytes: not 16-bit samples")
        if kind != self._kind:
            if self._kind is None or AUDIO_RATES[kind] != AUDIO_RATES[self._kind]:
                self._resampler = to_canonical(AUDIO_RATES[kind])
            self._kind = kind
            self.sink.set_kind(kind)
        samples = np.frombuffer(payload, "<i2").astype(np.int16)
        self.paced.push(self._resampler.process(samples))


class AudioSocketServer:
    """The AudioSocket TCP server of one gateway process: a `calls.service.Service`."""

    name = "audiosocket"

    def __init__(self, manager: CallManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings.audiosocket
        self.port = settings.audiosocket_port
        self.legs: set[AudioSocketLeg] = set()
        self.refused = 0
        self.bad_input = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, host=self.settings.bind, port=self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("AudioSocket on tcp:%s:%d", self.settings.bind, self.port)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        leg = AudioSocketLeg(self, reader, writer)
        leg.task = asyncio.current_task()
        self.legs.add(leg)
        try:
            await run_leg(self.manager, leg)
        finally:
            self.legs.discard(leg)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for leg in list(self.legs):
            if leg.session is not None:
                leg.session.end("shutdown")
            elif leg.task is not None:
                leg.task.cancel()
        tasks = [leg.task for leg in self.legs if leg.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    def status(self) -> dict[str, object]:
        return {
            "port": self.port,
            "calls": len(self.legs),
            "refused": self.refused,
            "bad_input": self.bad_input,
        }

    def readiness(self) -> tuple[Refusal, str] | None:
        return None  # no limit of its own: the manager's rule is the whole of it
