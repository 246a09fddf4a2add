"""G.711 µ-law and A-law codecs (ITU-T G.711) for SIP legs and G.711 WAV files.

Table-driven: encoding is one lookup in a 65 536-entry table indexed by the int16 sample,
decoding one lookup in a 256-entry table. The tables are built once from the segment
algorithm of the ITU-T G.711 reference (as in the classic Sun `g711.c` that CPython's
`audioop` also uses), so results are bit-exact with `audioop.lin2ulaw/ulaw2lin` and
`lin2alaw/alaw2lin` for 16-bit samples; `audioop` itself is not used (gone in Python 3.13).
"""

from __future__ import annotations

import numpy as np

_QUANT_MASK = 0x0F
_SEG_SHIFT = 4
_SEG_MASK = 0x70
_SIGN_BIT = 0x80
_ULAW_BIAS = 0x84  # G.711 µ-law bias (132), applied in the 14-bit domain as BIAS >> 2
_ULAW_CLIP = 8159

# Upper bounds of the eight segments (G.711 tables 1a/2a), in the 14-bit (µ) / 13-bit (A) domain.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _all_int16() -> np.ndarray:
    # Indexed by the uint16 view of the sample, so the table lookup is `table[x.view(uint16)]`.
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode_table() -> np.ndarray:
    pcm = _all_int16() >> 2  # 16-bit -> 14-bit linear
    negative = pcm < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.where(negative, -pcm, pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, magnitude, side="left")
    mantissa = (magnitude >> np.minimum(seg + 1, 31)) & _QUANT_MASK
    code = np.where(seg >= 8, 0x7F, (seg << _SEG_SHIFT) | mantissa)
    return (code ^ mask).astype(np.uint8)


def _build_ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & _QUANT_MASK) << 3) + _ULAW_BIAS
    t <<= (u & _SEG_MASK) >> _SEG_SHIFT
    return np.where(u & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode_table() -> np.ndarray:
    pcm = _all_int16() >> 3  # 16-bit -> 13-bit linear
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -pcm - 1, pcm)
    seg = np.searchsorted(_ALAW_SEG_END, magnitude, side="left")
    shift = np.where(seg < 2, 1, np.minimum(seg, 31))
    mantissa = (magnitude >> shift) & _QUANT_MASK
    code = np.where(seg >= 8, 0x7F, (seg << _SEG_SHIFT) | mantissa)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & _QUANT_MASK) << 4
    seg = (a & _SEG_MASK) >> _SEG_SHIFT
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & _SIGN_BIT, t, -t).astype(np.int16)


ULAW_ENCODE_TABLE = _build_ulaw_encode_table()
ULAW_DECODE_TABLE = _build_ulaw_decode_table()
ALAW_ENCODE_TABLE = _build_alaw_encode_table()
ALAW_DECODE_TABLE = _build_alaw_decode_table()


def _as_int16(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples)
    if arr.dtype != np.int16:
        raise TypeError(f"G.711 encoding takes int16 samples, got {arr.dtype}")
    return arr


def _as_codes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"G.711 decoding takes uint8 codes or bytes, got {data.dtype}")
        return data
    return np.frombuffer(data, dtype=np.uint8)


def ulaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> µ-law codes (uint8)."""
    return ULAW_ENCODE_TABLE[_as_int16(samples).view(np.uint16)]


def ulaw_decode(codes: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """µ-law codes (bytes or uint8 array) -> int16 samples."""
    return ULAW_DECODE_TABLE[_as_codes(codes)]


def alaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> A-law codes (uint8)."""
    return ALAW_ENCODE_TABLE[_as_int16(samples).view(np.uint16)]


def alaw_decode(codes: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A-law codes (bytes or uint8 array) -> int16 samples."""
    return ALAW_DECODE_TABLE[_as_codes(codes)]
