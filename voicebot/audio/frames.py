"""The canonical frame every transport converts to and from: 16 kHz, mono, int16, 20 ms.

Transports deliver audio in chunks of whatever size their wire format has; `FrameAssembler`
cuts any stream of samples into canonical frames without losing or duplicating a sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320

_INT16_SCALE = 32768.0


def pcm16_to_float(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1)."""
    return np.asarray(samples, dtype=np.int16).astype(np.float32) / _INT16_SCALE


def block_dbfs(samples: np.ndarray, block: int = FRAME_SAMPLES) -> np.ndarray:
    """RMS level (dBFS) of each whole `block` of int16 samples; a shorter tail is left out."""
    n = len(samples) // block
    x = pcm16_to_float(samples[: n * block]).astype(np.float64).reshape(n, block)
    return 10 * np.log10(np.mean(x * x, axis=1) + 1e-12)


def trim_leading_silence(
    samples: np.ndarray, floor_dbfs: float = -60.0, keep_ms: int = 10
) -> np.ndarray:
    """`samples` from `keep_ms` before the first 5 ms block louder than `floor_dbfs` (all of
    them if none is). A TTS voice's leading silence is pure wait for a caller: Piper puts
    25-400 ms of it before a sentence, varying from one rendition to the next."""
    samples = np.asarray(samples, dtype=np.int16)
    block = SAMPLE_RATE // 200
    levels = block_dbfs(samples, block)
    loud = np.flatnonzero(levels > floor_dbfs)
    if not len(loud):
        return samples
    start = max(0, int(loud[0]) * block - keep_ms * SAMPLE_RATE // 1000)
    return samples[start:]


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16, rounded to nearest and clipped (never wraps)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def silence(n_samples: int = FRAME_SAMPLES) -> np.ndarray:
    """A frame (or any length) of digital silence."""
    return np.zeros(n_samples, dtype=np.int16)


class FrameAssembler:
    """Cuts an arbitrary-length stream of int16 samples into fixed-size frames."""

    def __init__(self, frame_samples: int = FRAME_SAMPLES) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.frame_samples = frame_samples
        self._pending = np.zeros(0, dtype=np.int16)

    @property
    def pending_samples(self) -> int:
        """Samples held back until a whole frame is available."""
        return len(self._pending)

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Add samples; yield every whole frame now available (each a fresh array)."""
        data = np.asarray(samples, dtype=np.int16)
        if len(self._pending):
            data = np.concatenate([self._pending, data])
        n_frames = len(data) // self.frame_samples
        cut = n_frames * self.frame_samples
        self._pending = data[cut:].copy()
        for i in range(n_frames):
            yield data[i * self.frame_samples : (i + 1) * self.frame_samples].copy()

    def flush(self) -> np.ndarray | None:
        """The partial frame left at the end, zero-padded to a whole frame (None if empty)."""
        if not len(self._pending):
            return None
        frame = np.zeros(self.frame_samples, dtype=np.int16)
        frame[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        return frame


def split_frames(samples: np.ndarray, frame_samples: int = FRAME_SAMPLES) -> list[np.ndarray]:
    """A whole signal as canonical frames; the last one zero-padded."""
    assembler = FrameAssembler(frame_samples)
    frames = list(assembler.push(samples))
    tail = assembler.flush()
    if tail is not None:
        frames.append(tail)
    return frames
