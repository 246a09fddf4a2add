"""The segmenter's exact behaviour on scripted probabilities (no model involved)."""

from __future__ import annotations

import numpy as np
import pytest

from voicebot.models.vad import SpeechEnd, SpeechSegmenter, SpeechStart, VadParams, VadProbability

W = 512  # samples per window at 16 kHz: 32 ms
WT = W / 16000


def _run(probs: list[float], params: VadParams | None = None, finish: bool = True):
    seg = SpeechSegmenter(params or VadParams())
    events = []
    for k, p in enumerate(probs):
        # Window k holds the value k in every sample, so audio slices can be traced.
        events += seg.push(np.full(W, k, np.int16), p)
    if finish:
        events += seg.finish()
    return [e for e in events if not isinstance(e, VadProbability)], seg


def test_start_after_min_speech_and_end_after_min_silence() -> None:
    probs = [0.0] * 10 + [0.9] * 20 + [0.1] * 20
    events, _ = _run(probs, finish=False)
    start, end = events
    assert isinstance(start, SpeechStart) and isinstance(end, SpeechEnd)
    assert start.onset == pytest.approx(10 * WT)
    # 100 ms of speech needs 4 windows (128 ms): confirmed at the end of window 13.
    assert start.t == pytest.approx(14 * WT)
    assert end.start == pytest.approx(10 * WT) and end.end == pytest.approx(30 * WT)
    # 500 ms of silence needs 16 windows: decided at the end of window 45.
    assert end.t == pytest.approx(46 * WT)
    assert end.duration == pytest.approx(20 * WT)


def test_prefix_padding_is_exactly_200ms_before_onset() -> None:
    probs = [0.0] * 10 + [0.9] * 20 + [0.1] * 20
    events, _ = _run(probs, finish=False)
    start, end = events
    assert start.audio_start == pytest.approx(10 * WT - 0.2)
    assert len(start.audio) == 3200 + 4 * W
    assert np.all(start.audio[:3200] < 10) and start.audio[3199] == 9  # audio before onset
    # The ended segment carries prefix + speech, up to the end of speech, nothing after.
    assert end.audio_start == start.audio_start
    assert len(end.audio) == 3200 + 20 * W
    assert end.audio[-1] == 29


def test_short_blip_does_not_start() -> None:
    events, seg = _run([0.0] * 5 + [0.9] * 3 + [0.1] * 10 + [0.9] * 3 + [0.0] * 5)
    assert events == []
    assert not seg.in_speech


def test_hysteresis_middle_values_keep_speech_going() -> None:
    # 0.4 is below activation but above deactivation: a started segment stays open.
    probs = [0.9] * 5 + [0.4] * 30 + [0.9] * 2 + [0.0] * 16
    events, _ = _run(probs, finish=False)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    assert events[1].end == pytest.approx(37 * WT)


def test_pause_shorter_than_min_silence_does_not_split() -> None:
    probs = [0.9] * 10 + [0.0] * 15 + [0.9] * 10 + [0.0] * 16
    events, _ = _run(probs, finish=False)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    assert events[1].start == 0.0 and events[1].end == pytest.approx(35 * WT)


def test_silence_counted_from_first_quiet_window_through_middle_values() -> None:
    # Silence starts at window 10; 0.4 values neither reset nor stop the silence clock.
    probs = [0.9] * 10 + [0.1] + [0.4] * 10 + [0.1] * 5
    events, _ = _run(probs, finish=False)
    assert isinstance(events[-1], SpeechEnd)
    assert events[-1].end == pytest.approx(10 * WT)
    assert events[-1].t == pytest.approx(26 * WT)


def test_finish_closes_open_segment() -> None:
    events, _ = _run([0.9] * 10)
    assert isinstance(events[-1], SpeechEnd)
    assert events[-1].end == pytest.approx(10 * WT)


def test_two_segments_second_prefix_comes_from_trailing_silence() -> None:
    probs = [0.9] * 10 + [0.0] * 20 + [0.9] * 10 + [0.0] * 16
    events, _ = _run(probs, finish=False)
    starts = [e for e in events if isinstance(e, SpeechStart)]
    assert len(starts) == 2
    second = starts[1]
    assert second.onset == pytest.approx(30 * WT)
    assert second.audio_start == pytest.approx(30 * WT - 0.2)
    assert second.audio[0] == 23  # 200 ms = 6.25 windows back from window 30


def test_params_validated_and_configurable() -> None:
    with pytest.raises(ValueError):
        VadParams(activation_threshold=0.3, deactivation_threshold=0.5)
    with pytest.raises(ValueError):
        VadParams(min_speech_ms=-1)
    events, _ = _run([0.9] * 2 + [0.0] * 5, VadParams(min_speech_ms=0, min_silence_ms=64))
    assert events[0].t == pytest.approx(WT)
    assert events[1].end == pytest.approx(2 * WT) and events[1].t == pytest.approx(4 * WT)


def test_endless_speech_is_cut_at_max_speech() -> None:
    params = VadParams(max_speech_ms=1000)
    events, seg = _run([0.9] * 100, params, finish=False)
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    # 1000 ms = 32 windows (31.25 rounded up): cut there, and speech goes on in a new one.
    assert ends[0].duration == pytest.approx(32 * WT)
    assert len(ends) == 3 and seg.in_speech
    starts = [e for e in events if isinstance(e, SpeechStart)]
    assert len(starts) == 4
