"""The WebRTC leg's receive path: each of the caller's RTP packets reaches the decoder when it
arrives (aiortc's own audio buffer holds four), late and repeated packets are dropped, and a
jump no reordering explains starts the stream over."""

from __future__ import annotations

import asyncio
import contextlib

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from tests.webrtc_client import audio_frame
from voicebot.gateway.webrtc.receive_buffer import ArrivalOrderBuffer, release_on_arrival


def packet(sequence: int, timestamp: int | None = None) -> RtpPacket:
    ts = sequence * 960 if timestamp is None else timestamp
    return RtpPacket(payload_type=111, sequence_number=sequence, timestamp=ts % (1 << 32),
                     payload=sequence.to_bytes(2, "big"))  # fmt: skip


def passed(buffer: ArrivalOrderBuffer, sequences: list[int]) -> list[int]:
    out = []
    for sequence in sequences:
        pli, frame = buffer.add(packet(sequence))
        assert pli is False
        if frame is not None:
            out.append(int.from_bytes(frame.data, "big"))
            assert frame.timestamp == (sequence * 960) % (1 << 32)
    return out


def test_packets_pass_as_they_arrive_and_late_ones_are_dropped() -> None:
    buffer = ArrivalOrderBuffer()
    assert passed(buffer, [10, 11, 13, 12, 14, 14, 15, 9, 17]) == [10, 11, 13, 14, 15, 17]
    assert buffer.late == 3  # 12 after 13, the second 14, 9


def test_the_sequence_number_wraps() -> None:
    assert passed(ArrivalOrderBuffer(), [65534, 65535, 0, 1, 65535, 2]) == [65534, 65535, 0, 1, 2]


def test_a_jump_back_beyond_any_reordering_is_a_new_stream() -> None:
    buffer = ArrivalOrderBuffer()
    assert passed(buffer, [5000, 5001, 4990, 3000, 3001, 3002]) == [5000, 5001, 3000, 3001, 3002]


def test_an_audio_receiver_takes_the_buffer() -> None:
    async def main() -> None:
        pc = RTCPeerConnection()
        try:
            receiver = pc.addTransceiver("audio").receiver
            assert release_on_arrival(receiver)
            assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, ArrivalOrderBuffer)
        finally:
            await pc.close()

    asyncio.run(main())


class SteppedMic(MediaStreamTrack):
    """A microphone that sends one 20 ms frame each time the test says so."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[int] = asyncio.Queue()
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self.frames.get()
        tone = (3000 * np.sin(np.arange(960) * 2 * np.pi * 440 / 48000)).astype(np.int16)
        frame = audio_frame(tone, self._pts)
        self._pts += 960
        return frame


def test_each_packet_sent_is_decoded_before_the_next_is_sent() -> None:
    """Two aiortc peers over loopback; the answerer's receiver has the buffer, as the WebRTC
    leg's does. With aiortc's own buffer the fifth frame sent would be the first decoded."""

    async def main() -> list[int]:
        caller, bot = RTCPeerConnection(), RTCPeerConnection()
        mic = SteppedMic()
        decoded = 0
        got_one = asyncio.Event()
        lags: list[int] = []
        readers: list[asyncio.Task[None]] = []

        @bot.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            async def read() -> None:
                nonlocal decoded
                with contextlib.suppress(MediaStreamError):
                    while True:
                        await track.recv()
                        decoded += 1
                        got_one.set()

            readers.append(asyncio.ensure_future(read()))

        try:
            caller.addTrack(mic)
            await caller.setLocalDescription(await caller.createOffer())
            await bot.setRemoteDescription(caller.localDescription)
            for transceiver in bot.getTransceivers():
                assert release_on_arrival(transceiver.receiver)
            await bot.setLocalDescription(await bot.createAnswer())
            await caller.setRemoteDescription(bot.localDescription)
            for sent in range(1, 16):
                mic.frames.put_nowait(sent)
                # Time for this frame to come out of the decoder (the first waits for the
                # connection): a wait, not a speed check; a held frame stays held.
                deadline = asyncio.get_running_loop().time() + (10.0 if sent == 1 else 2.0)
                while decoded < sent and asyncio.get_running_loop().time() < deadline:
                    got_one.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(got_one.wait(), 0.1)
                lags.append(sent - decoded)
        finally:
            await caller.close()
            await bot.close()
        return lags

    lags = asyncio.run(main())
    # aiortc's own buffer: [1, 2, 3, 4, 4, 4, ...]. One packet may be lost to the start.
    assert max(lags) <= 1, lags
