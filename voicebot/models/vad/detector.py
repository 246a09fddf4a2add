"""A call's VAD: its model stream plus its segmenter; and whole-file segmentation for the CLI.

`VoiceActivityDetector.push(frame)` runs the model unbatched, for one stream alone (tests, a
single call). Many concurrent calls instead collect `pending windows` and advance together
through `SileroVad.run_batch`, then hand each probability to `on_probability`.
`detect_speech_segments` (the CLI) has the whole signal up front: it takes every window's
probability from `SileroVad.probabilities` (the same numbers, bit for bit, computed in a
few large model runs) and feeds them to the same segmenter.
"""

from __future__ import annotations

import numpy as np

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.models.vad.segmenter import (
    SegmenterEvent,
    SpeechEnd,
    SpeechSegment,
    SpeechSegmenter,
    VadParams,
)
from voicebot.models.vad.silero import WINDOW_SAMPLES, SileroVad, VadStream


class VoiceActivityDetector:
    """Frames in, VAD events out, for one stream."""

    def __init__(
        self,
        model: SileroVad | None = None,
        params: VadParams | None = None,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.model = model or SileroVad.shared()
        self.stream: VadStream = self.model.new_stream(sample_rate)
        self.segmenter = SpeechSegmenter(params, sample_rate, self.stream.window_samples)

    def windows(self, samples: np.ndarray) -> list[np.ndarray]:
        """Buffer samples; the whole windows now due for the model (for batched use)."""
        return self.stream.push(samples)

    def on_probability(self, window: np.ndarray, probability: float) -> list[SegmenterEvent]:
        """Feed one window's model output to the segmenter (after a batched run)."""
        return self.segmenter.push(window, probability)

    def push(self, samples: np.ndarray) -> list[SegmenterEvent]:
        """Buffer samples, run the model on each completed window, return the events."""
        events: list[SegmenterEvent] = []
        for window in self.stream.push(samples):
            events.extend(self.segmenter.push(window, self.stream.probability(window)))
        return events

    def finish(self) -> list[SegmenterEvent]:
        """End of stream: close an open segment."""
        return self.segmenter.finish()


def detect_speech_segments(
    samples: np.ndarray,
    params: VadParams | None = None,
    model: SileroVad | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> list[SpeechSegment]:
    """Speech segments of a whole int16 signal: exactly those the streaming detector finds
    fed the same samples (same probabilities, same segmenter), computed faster."""
    pcm = np.asarray(samples)
    if pcm.dtype != np.int16:
        raise TypeError(f"detect_speech_segments takes int16 samples, got {pcm.dtype}")
    pcm = pcm.reshape(-1)
    vad = model or SileroVad.shared()
    probabilities = vad.probabilities(pcm, sample_rate)
    segmenter = SpeechSegmenter(params, sample_rate, WINDOW_SAMPLES[sample_rate])
    windows = pcm[: len(probabilities) * segmenter.window_samples].reshape(
        len(probabilities), segmenter.window_samples
    )
    segments: list[SpeechSegment] = []
    for window, probability in zip(windows, probabilities.tolist(), strict=True):
        for event in segmenter.push(window, probability):
            if isinstance(event, SpeechEnd):
                segments.append(SpeechSegment(event.start, event.end))
    segments.extend(
        SpeechSegment(e.start, e.end) for e in segmenter.finish() if isinstance(e, SpeechEnd)
    )
    return segments
