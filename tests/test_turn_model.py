"""The turn model: our Whisper log-mel features, and Smart Turn v3.2 on human speech."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests import human_speech
from voicebot.models.turn import BatchedTurnModel, SmartTurn, load_turn_model
from voicebot.models.turn import features as feat
from voicebot.models.turn.weights import SMART_TURN_V3

SR = 16000


def _model_or_skip() -> SmartTurn:
    if not SMART_TURN_V3.cached().is_file():
        pytest.skip("smart-turn model not fetched: run `make setup`")
    return SmartTurn.shared()


def _speech_or_skip() -> dict[str, np.ndarray]:
    if not human_speech.available():
        pytest.skip("human speech not fetched: run `make setup`")
    return {r.key: r.samples() for r in human_speech.recordings()}


def test_window_keeps_the_last_8_s_and_pads_in_front() -> None:
    short = np.full(SR, 16384, np.int16)
    window = feat.turn_window(short)
    assert window.shape == (8 * SR,) and window.dtype == np.float32
    assert np.all(window[: 7 * SR] == 0) and np.all(window[7 * SR :] == 0.5)
    long = np.arange(10 * SR).astype(np.float32) / (10 * SR)
    assert np.array_equal(feat.turn_window(long), long[2 * SR :])


def test_features_shape_range_and_padding() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(2 * SR) * 3000).astype(np.int16)
    feats = feat.features(audio)
    assert feats.shape == (80, 800) and feats.dtype == np.float32
    # Floored 8 decades below the peak, then (x + 4) / 4: a range of at most 2.
    assert feats.max() - feats.min() <= 2.0 + 1e-6
    # The front padding is one constant after scaling: every frame there is identical.
    assert np.allclose(feats[:, 10:550], feats[:, 10:11])
    assert not np.allclose(feats[:, 700], feats[:, 10])


def test_a_tone_peaks_in_the_mel_band_of_its_frequency() -> None:
    t = np.arange(8 * SR) / SR
    for hz in (300.0, 1000.0, 3000.0):
        feats = feat.features((np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16))
        band = int(np.argmax(feats[:, 400]))
        filters = feat.mel_filters()
        bins = np.linspace(0, SR / 2, filters.shape[1])
        centre = bins[np.argmax(filters[band])]
        assert abs(centre - hz) < 0.15 * hz + 40, (hz, centre)


def test_sparse_mel_projection_equals_the_dense_filterbank() -> None:
    rng = np.random.default_rng(1)
    power = rng.random((20, 201))
    taps, weights, starts = feat._sparse_filters()
    sparse = np.add.reduceat(power[:, taps] * weights, starts, axis=1)
    np.testing.assert_allclose(sparse, power @ feat.mel_filters().T, rtol=1e-10)


def test_complete_and_unfinished_human_utterances() -> None:
    model = _model_or_skip()
    speech = _speech_or_skip()
    pause = np.zeros(SR // 5, np.int16)
    complete = np.concatenate([speech["cards-003"], pause])  # "seven of clubs"
    # "had he married a more amiable woman he might have been made | still more ..."
    unfinished = np.concatenate([speech["librivox-0920"][: int(3.84 * SR)], pause])
    whole = np.concatenate([speech["librivox-0920"], pause])
    p = model.probabilities([complete, unfinished, whole])
    assert p[0] > 0.5 and p[2] > 0.5
    assert p[1] < 0.5


def test_batched_runner_matches_the_model_and_batches() -> None:
    model = _model_or_skip()
    speech = _speech_or_skip()
    clips = [speech["cards-003"], speech["librivox-0930"][: int(1.09 * SR)], speech["goforward"]]
    sizes: list[int] = []
    runner = BatchedTurnModel(model, on_batch=lambda n, s: sizes.append(n))

    async def main() -> list[float]:
        return await asyncio.gather(*(runner.probability(c) for c in clips))

    try:
        got = asyncio.run(main())
    finally:
        runner.close()
    np.testing.assert_allclose(got, model.probabilities(clips), atol=1e-5)
    assert sum(sizes) == 3 and max(sizes) == 3  # submitted together: one run


def test_missing_model_file_means_no_turn_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VOICEBOT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(SmartTurn, "_shared", None)
    assert load_turn_model() is None


def test_corrupt_model_file_means_no_turn_model(tmp_path, monkeypatch) -> None:
    target = tmp_path / "registry" / SMART_TURN_V3.name / "smart-turn-v3.2-cpu.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a model")
    monkeypatch.setenv("VOICEBOT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(SmartTurn, "_shared", None)
    assert load_turn_model() is None  # sha256 mismatch
