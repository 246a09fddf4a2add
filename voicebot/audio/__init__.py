"""Audio primitives at the edges of the flow: canonical frames, G.711, resampling, WAV files.

Everything here is a pure function or a small stateful numpy stream; no I/O but the WAV reader.
"""

from voicebot.audio.frames import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    FrameAssembler,
    float_to_pcm16,
    pcm16_to_float,
)

__all__ = [
    "FRAME_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "FrameAssembler",
    "float_to_pcm16",
    "pcm16_to_float",
]
