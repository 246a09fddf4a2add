"""G.711 against CPython 3.11's audioop: every code, every int16 input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicebot.audio import g711

audioop = pytest.importorskip("audioop", reason="audioop (the reference) is gone in 3.13")

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


@pytest.mark.parametrize(
    ("encode", "reference"),
    [(g711.ulaw_encode, "lin2ulaw"), (g711.alaw_encode, "lin2alaw")],
)
def test_encode_all_65536_inputs_bit_exact(encode, reference) -> None:
    expected = np.frombuffer(getattr(audioop, reference)(ALL_INT16.tobytes(), 2), np.uint8)
    got = encode(ALL_INT16)
    assert got.dtype == np.uint8
    mismatches = np.flatnonzero(got != expected)
    assert len(mismatches) == 0, f"first mismatch at input {ALL_INT16[mismatches[0]]}"


@pytest.mark.parametrize(
    ("decode", "reference"),
    [(g711.ulaw_decode, "ulaw2lin"), (g711.alaw_decode, "alaw2lin")],
)
def test_decode_all_256_codes_bit_exact(decode, reference) -> None:
    expected = np.frombuffer(getattr(audioop, reference)(ALL_CODES, 2), np.int16)
    np.testing.assert_array_equal(decode(ALL_CODES), expected)
    np.testing.assert_array_equal(decode(np.frombuffer(ALL_CODES, np.uint8)), expected)


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_decoded_codes_reencode_to_themselves(encode, decode) -> None:
    codes = np.arange(256, dtype=np.uint8)
    again = encode(decode(codes))
    # µ-law has two zeros (0x7F and 0xFF, +0 and -0) that decode alike: both come back as one.
    same = again == codes
    assert same.sum() >= 255
    np.testing.assert_array_equal(decode(again), decode(codes))


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode(np.zeros(4, dtype=np.float32))
    with pytest.raises(TypeError, match="uint8"):
        g711.alaw_decode(np.zeros(4, dtype=np.int16))


def test_no_audioop_at_run_time() -> None:
    assert "audioop" not in g711.__dict__
    source = Path(g711.__file__).read_text()
    assert "import audioop" not in source
