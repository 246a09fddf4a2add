"""Streaming resamplers: frame-by-frame == whole, == scipy's resample_poly after the delay."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from voicebot.audio.resample import (
    StreamingResampler,
    design_filter,
    resample_many,
    resample_whole,
)

PAIRS = [
    (8000, 16000),
    (48000, 16000),
    (16000, 48000),
    (22050, 16000),
    (24000, 16000),
    (16000, 8000),
]


def _test_signal(rate: int, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)
    x += 0.05 * rng.standard_normal(len(t))
    return np.rint(np.clip(x, -1, 1) * 32767).astype(np.int16)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frames_equal_whole(in_rate: int, out_rate: int) -> None:
    x = _test_signal(in_rate)
    frame = in_rate // 50  # 20 ms
    streaming = StreamingResampler(in_rate, out_rate)
    chunks = [streaming.process(x[i : i + frame]) for i in range(0, len(x), frame)]
    whole = resample_whole(x, in_rate, out_rate)
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    # 20 ms in gives 20 ms out, every frame.
    assert {len(c) for c in chunks} == {out_rate // 50}


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_odd_chunk_sizes_equal_whole(in_rate: int, out_rate: int) -> None:
    x = _test_signal(in_rate, seconds=0.7, seed=1)
    rng = np.random.default_rng(2)
    streaming = StreamingResampler(in_rate, out_rate)
    out, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(0, 700))
        out.append(streaming.process(x[pos : pos + n]))
        pos += n
    np.testing.assert_array_equal(np.concatenate(out), resample_whole(x, in_rate, out_rate))
    assert len(np.concatenate(out)) == -(-len(x) * out_rate // in_rate)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_matches_resample_poly_after_group_delay(in_rate: int, out_rate: int) -> None:
    x = _test_signal(in_rate, seed=3)
    r = StreamingResampler(in_rate, out_rate)
    frame = in_rate // 50
    ours = np.concatenate([r.process(x[i : i + frame]) for i in range(0, len(x), frame)])
    reference = np.rint(resample_poly(x.astype(np.float64) / 32768, r.up, r.down) * 32768)
    edge = (
        len(design_filter(r.up, r.down)) // r.down + 1
    )  # one filter length: edge effects of resample_poly
    d = r.delay_out
    ours_mid = ours[d + edge : len(ours) - edge].astype(np.int64)
    ref_mid = reference[edge : len(ours) - d - edge].astype(np.int64)
    assert len(ours_mid) > len(ours) // 2
    assert np.max(np.abs(ours_mid - ref_mid)) <= 1


def test_no_click_at_frame_edges() -> None:
    # A pure tone resampled frame by frame: the sample-to-sample step never exceeds what the
    # tone itself has (a discontinuity at a frame edge would show as a jump).
    rate_in, rate_out, f = 8000, 16000, 300.0
    t = np.arange(8000) / rate_in
    x = np.rint(0.5 * 32767 * np.sin(2 * np.pi * f * t)).astype(np.int16)
    r = StreamingResampler(rate_in, rate_out)
    y = np.concatenate([r.process(x[i : i + 160]) for i in range(0, len(x), 160)])
    steady = y[200:].astype(np.float64)
    max_step = 0.5 * 32767 * 2 * np.pi * f / rate_out * 1.05
    assert np.max(np.abs(np.diff(steady))) <= max_step


def test_lowpass_removes_aliasing_on_downsampling() -> None:
    # 6 kHz cannot exist at 8 kHz sampling: it must be filtered out, not folded to 2 kHz.
    t = np.arange(16000) / 16000
    x = np.rint(0.5 * 32767 * np.sin(2 * np.pi * 6000 * t)).astype(np.int16)
    y = resample_whole(x, 16000, 8000).astype(np.float64)[200:]
    assert np.sqrt(np.mean(y**2)) < 0.01 * 0.5 * 32767 / np.sqrt(2)


def test_identity_and_errors() -> None:
    x = _test_signal(16000, 0.1)
    np.testing.assert_array_equal(resample_whole(x, 16000, 16000), x)
    with pytest.raises(ValueError):
        StreamingResampler(0, 16000)
    with pytest.raises(TypeError):
        StreamingResampler(8000, 16000).process(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError):
        StreamingResampler(8000, 16000).process_float(np.zeros((2, 10)))


def test_reset_restarts_the_stream() -> None:
    x = _test_signal(48000, 0.2)
    r = StreamingResampler(48000, 16000)
    first = r.process(x)
    r.reset()
    np.testing.assert_array_equal(r.process(x), first)


def _check_batch_equals_solo(
    in_rate: int, out_rate: int, signals: list[np.ndarray], offsets: list[int], chunk: int,
    ticks: int,
) -> None:  # fmt: skip
    """Streams with `offsets` samples of past each: `ticks` chunks through `resample_many`
    give exactly what each stream's own resampler gives, always as int16."""
    solo = [StreamingResampler(in_rate, out_rate) for _ in signals]
    batch = [StreamingResampler(in_rate, out_rate) for _ in signals]
    for rs in (solo, batch):
        for r, x, o in zip(rs, signals, offsets, strict=True):
            r.process(x[:o])
    for tick in range(ticks):
        chunks = np.stack(
            [
                x[o + tick * chunk : o + (tick + 1) * chunk]
                for x, o in zip(signals, offsets, strict=True)
            ]
        )
        together = resample_many(batch, chunks)
        alone = np.stack([r.process(c) for r, c in zip(solo, chunks, strict=True)])
        np.testing.assert_array_equal(together, alone)
        assert together.dtype == np.int16


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (22050, 16000)])
def test_many_streams_at_once_equal_one_by_one(in_rate: int, out_rate: int) -> None:
    # Streams that start at different times (as SIP calls do) share each tick's batch.
    signals = [_test_signal(in_rate, 0.5, seed=s) for s in range(5)]
    frame = in_rate // 50
    offsets = [frame * (1 + i % 3) for i in range(len(signals))]  # different amounts of past
    _check_batch_equals_solo(in_rate, out_rate, signals, offsets, frame, ticks=10)


def test_many_streams_refuses_mixed_rates() -> None:
    streams = [StreamingResampler(8000, 16000), StreamingResampler(16000, 8000)]
    with pytest.raises(ValueError, match="rate pair"):
        resample_many(streams, np.zeros((2, 160), np.int16))
    with pytest.raises(ValueError, match="int16 row"):
        resample_many(streams[:1], np.zeros((2, 160), np.int16))


def test_skipping_silence_is_exact() -> None:
    x = _test_signal(16000, 0.2)
    skipping, computing = StreamingResampler(16000, 8000), StreamingResampler(16000, 8000)
    silence = np.zeros(320, np.int16)
    assert skipping.skip_silence(320)  # fresh: silent history
    computing.process(silence)
    out_a = skipping.process(x[:320])
    out_b = computing.process(x[:320])
    np.testing.assert_array_equal(out_a, out_b)
    assert not skipping.skip_silence(320)  # speech in the history: must be computed
    for _ in range(3):  # the speech's tail rings out, then the filter holds silence again
        np.testing.assert_array_equal(skipping.process(silence), computing.process(silence))
    assert skipping.skip_silence(320)
    computing.process(silence)
    np.testing.assert_array_equal(skipping.process(x[320:640]), computing.process(x[320:640]))


def test_many_streams_at_different_phases_and_long_chunks() -> None:
    # 22.05 kHz streams whose pasts are not whole multiples of the ratio's denominator (441)
    # take the one-by-one path; long chunks (>= 4 x 320 outputs) the per-sub-filter form.
    signals = [_test_signal(22050, 0.6, seed=s) for s in range(3)]
    for offsets, chunk in (([100, 441, 1000], 441), ([0, 441, 882], 1764 * 2)):
        _check_batch_equals_solo(22050, 16000, signals, offsets, chunk, ticks=2)
