"""WAV files in and out of the canonical format: for `voicebot vad`, `simulate` and tests.

Reads RIFF/WAVE with PCM 16-bit, IEEE float 32/64-bit, µ-law or A-law (G.711) data, plain
or WAVE_FORMAT_EXTENSIBLE, any rate, mono or stereo; gives mono 16 kHz int16 through the
streaming resampler. Anything else is refused with a `WavError` that says why.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.audio import g711
from voicebot.audio.frames import SAMPLE_RATE, float_to_pcm16
from voicebot.audio.resample import resample_whole

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_FORMAT_NAMES = {
    WAVE_FORMAT_PCM: "PCM",
    WAVE_FORMAT_IEEE_FLOAT: "IEEE float",
    WAVE_FORMAT_ALAW: "A-law",
    WAVE_FORMAT_MULAW: "µ-law",
}
MAX_CHANNELS = 2
MAX_RATE = 384_000


class WavError(ValueError):
    """A file that is not a WAV this project can read, with the reason."""


@dataclass(frozen=True)
class WavAudio:
    """Decoded WAV content: int16 samples shaped (frames, channels) at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int
    format_tag: int
    channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise WavError(f"fmt chunk too short ({len(body)} bytes, need 16)")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise WavError("WAVE_FORMAT_EXTENSIBLE fmt chunk too short")
        # The first two bytes of the SubFormat GUID carry the plain format tag.
        tag = struct.unpack("<H", body[24:26])[0]
    return tag, channels, rate, bits


def _decode_samples(tag: int, bits: int, data: bytes, channels: int) -> np.ndarray:
    if tag == WAVE_FORMAT_PCM:
        if bits != 16:
            raise WavError(f"PCM WAV with {bits}-bit samples is not supported (only 16-bit)")
        usable = len(data) - len(data) % (2 * channels)
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
    if tag in (WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW):
        if bits != 8:
            raise WavError(f"G.711 WAV must have 8-bit samples, got {bits}")
        usable = len(data) - len(data) % channels
        codes = np.frombuffer(data[:usable], dtype=np.uint8)
        return g711.ulaw_decode(codes) if tag == WAVE_FORMAT_MULAW else g711.alaw_decode(codes)
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        if bits not in (32, 64):
            raise WavError(f"float WAV with {bits}-bit samples is not supported (32 or 64)")
        width = bits // 8
        usable = len(data) - len(data) % (width * channels)
        floats = np.frombuffer(data[:usable], dtype="<f4" if bits == 32 else "<f8")
        if not np.all(np.isfinite(floats)):
            bad = int(np.count_nonzero(~np.isfinite(floats)))
            raise WavError(f"float WAV holds {bad} NaN/infinite samples")
        return float_to_pcm16(floats)
    name = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
    raise WavError(f"unsupported WAV encoding: {name} (PCM16, float, µ-law and A-law are)")


def read_wav_bytes(raw: bytes) -> WavAudio:
    """Parse a whole WAV file held in memory."""
    if len(raw) < 12:
        raise WavError("file is empty or too short to be a WAV")
    riff, _size, wave = struct.unpack("<4sI4s", raw[:12])
    if riff not in (b"RIFF", b"RIFX") or wave != b"WAVE":
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    if riff == b"RIFX":
        raise WavError("big-endian RIFX WAV files are not supported")
    fmt: tuple[int, int, int, int] | None = None
    data: bytes | None = None
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id, chunk_size = struct.unpack("<4sI", raw[pos : pos + 8])
        body = raw[pos + 8 : pos + 8 + chunk_size]
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(body)
        elif chunk_id == b"data":
            data = body  # a truncated data chunk is read as far as it goes
            if fmt is not None:
                break
        pos += 8 + chunk_size + (chunk_size & 1)  # chunks are word aligned
    if fmt is None:
        raise WavError("WAV has no fmt chunk")
    if data is None:
        raise WavError("WAV has no data chunk")
    tag, channels, rate, bits = fmt
    if not 1 <= channels <= MAX_CHANNELS:
        raise WavError(f"WAV has {channels} channels; mono and stereo are supported")
    if not 1000 <= rate <= MAX_RATE:
        raise WavError(f"WAV sample rate {rate} Hz is out of range")
    samples = _decode_samples(tag, bits, data, channels).reshape(-1, channels)
    return WavAudio(samples=samples, sample_rate=rate, format_tag=tag, channels=channels)


def read_wav(path: str | Path) -> WavAudio:
    """Read a WAV file from disk (see `read_wav_bytes`)."""
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError as exc:
        raise WavError("is a directory") from exc
    except FileNotFoundError as exc:
        raise WavError("no such file") from exc
    except OSError as exc:
        raise WavError(str(exc.strerror or exc)) from exc
    return read_wav_bytes(raw)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) int16 -> mono int16 by averaging the channels."""
    if samples.ndim == 1 or samples.shape[1] == 1:
        return samples.reshape(-1).astype(np.int16)
    return np.rint(samples.astype(np.float64).mean(axis=1)).astype(np.int16)


def read_wav_canonical(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV file as mono int16 at `sample_rate` (16 kHz by default)."""
    audio = read_wav(path)
    mono = to_mono(audio.samples)
    if audio.sample_rate == sample_rate:
        return mono
    return resample_whole(mono, audio.sample_rate, sample_rate)


def encode_wav(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, encoding: str = "pcm16"
) -> bytes:
    """int16 samples, mono (n,) or multichannel (n, ch), as WAV bytes.

    `encoding` is "pcm16", "ulaw" or "alaw".
    """
    pcm = np.asarray(samples)
    if pcm.dtype != np.int16:
        raise TypeError(f"encode_wav takes int16 samples, got {pcm.dtype}")
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    interleaved = pcm.reshape(-1)
    if encoding == "pcm16":
        tag, bits, payload = WAVE_FORMAT_PCM, 16, interleaved.astype("<i2").tobytes()
    elif encoding == "ulaw":
        tag, bits, payload = WAVE_FORMAT_MULAW, 8, g711.ulaw_encode(interleaved).tobytes()
    elif encoding == "alaw":
        tag, bits, payload = WAVE_FORMAT_ALAW, 8, g711.alaw_encode(interleaved).tobytes()
    else:
        raise ValueError(f"unknown WAV encoding {encoding!r}")
    chunks = _header(tag, channels, sample_rate, bits, len(payload)) + payload
    if len(payload) & 1:
        chunks += b"\x00"
    return chunks


def _header(tag: int, channels: int, sample_rate: int, bits: int, data_bytes: int) -> bytes:
    """RIFF, fmt and data chunk headers for `data_bytes` of samples that follow."""
    block_align = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH", tag, channels, sample_rate, sample_rate * block_align, block_align, bits
    )
    if tag != WAVE_FORMAT_PCM:
        fmt += struct.pack("<H", 0)  # cbSize: non-PCM fmt chunks carry it
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_bytes)
    riff_size = 4 + len(chunks) + data_bytes + (data_bytes & 1)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks


def pcm16_header(channels: int, sample_rate: int, data_bytes: int) -> bytes:
    """The 44-byte header of a PCM16 WAV file (written first, rewritten once the length
    of a file written as it goes is known)."""
    return _header(WAVE_FORMAT_PCM, channels, sample_rate, 16, data_bytes)


def write_wav(
    path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, encoding: str = "pcm16"
) -> None:
    """Write int16 samples as a WAV file (see `encode_wav`)."""
    Path(path).write_bytes(encode_wav(samples, sample_rate, encoding))
