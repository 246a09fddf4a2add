"""Speech segmenter: per-window speech probabilities -> speech_start / speech_end events.

Hysteresis between an activation and a deactivation threshold; speech must last
`min_speech_ms` before it starts a segment (so clicks and coughs do not), silence must last
`min_silence_ms` before it ends one (so pauses between words do not), unless an endpointer
ends it earlier at a pause (`end_at_pause`: the agent's smart end-of-turn, which then sets
`min_silence_ms` to its longest wait). The `prefix_padding_ms` of audio before the onset
travels with the segment so STT hears the first phoneme whole.
All times are seconds of stream audio, counted from the first sample pushed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from voicebot.audio.frames import block_dbfs


@dataclass(frozen=True)
class VadParams:
    activation_threshold: float = 0.5
    deactivation_threshold: float = 0.35
    min_speech_ms: int = 100
    min_silence_ms: int = 500
    prefix_padding_ms: int = 200
    max_speech_ms: int = 30_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.deactivation_threshold <= self.activation_threshold <= 1.0:
            raise ValueError(
                "need 0 <= deactivation_threshold <= activation_threshold <= 1, got "
                f"{self.deactivation_threshold} / {self.activation_threshold}"
            )
        if min(self.min_speech_ms, self.min_silence_ms, self.prefix_padding_ms) < 0:
            raise ValueError("durations must not be negative")
        if self.max_speech_ms <= self.min_speech_ms:
            raise ValueError("max_speech_ms must exceed min_speech_ms")


@dataclass(frozen=True)
class VadProbability:
    """The model's output for one window that ends at `t`."""

    t: float
    probability: float


@dataclass(frozen=True)
class SpeechStart:
    """Speech confirmed: it began at `onset`; confirmed at `t` (end of the deciding window).

    `audio` holds the prefix padding and the speech so far (int16), `audio_start` its time.
    """

    t: float
    onset: float
    audio: np.ndarray = field(repr=False)
    audio_start: float


@dataclass(frozen=True)
class SpeechEnd:
    """Speech over: it ran from `start` to `end`; decided at `t` after min silence.

    `audio` (int16) runs from `audio_start` (onset minus prefix padding) to `end`.
    """

    t: float
    start: float
    end: float
    audio: np.ndarray = field(repr=False)
    audio_start: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SpeechSegment:
    start: float
    end: float

    def as_dict(self, ndigits: int = 3) -> dict[str, float]:
        return {"start": round(self.start, ndigits), "end": round(self.end, ndigits)}


SegmenterEvent = VadProbability | SpeechStart | SpeechEnd


class _Phase(enum.Enum):
    SILENCE = "silence"
    STARTING = "starting"
    SPEECH = "speech"


def window_dbfs(window: np.ndarray) -> float:
    """RMS level of one int16 window in dBFS."""
    return float(block_dbfs(window, len(window))[0]) if len(window) else -120.0


class SpeechSegmenter:
    """Streaming state machine over (window, probability) pairs of one stream."""

    def __init__(
        self, params: VadParams | None = None, sample_rate: int = 16_000, window_samples: int = 512
    ) -> None:
        self.params = params or VadParams()
        self.sample_rate = sample_rate
        self.window_samples = window_samples
        self._prefix_samples = self.params.prefix_padding_ms * sample_rate // 1000
        # Windows quieter than this (dBFS) count as silence whatever the model says: set by
        # the agent once a long segment proved to be background talk, not the caller.
        self.level_floor_dbfs: float | None = None
        self.reset()

    def reset(self) -> None:
        self._phase = _Phase.SILENCE
        self._window_index = 0
        self._ring: deque[np.ndarray] = deque()
        self._ring_samples = 0
        self._onset_index = 0
        self._audio_start_sample = 0
        self._segment: list[np.ndarray] = []
        self._silence_from: int | None = None  # window index where trailing silence began
        self._voiced_windows = 0  # of the open (or starting) segment, at or over deactivation

    @property
    def in_speech(self) -> bool:
        """True between speech_start and speech_end."""
        return self._phase is _Phase.SPEECH

    @property
    def speech_pending(self) -> bool:
        """Possible speech: over the activation threshold, not yet for min_speech_ms."""
        return self._phase is _Phase.STARTING

    @property
    def trailing_silence_ms(self) -> float:
        """How long the open segment has been quiet (0 while speech goes on or none is open)."""
        if self._phase is not _Phase.SPEECH or self._silence_from is None:
            return 0.0
        return self._ms(self._window_index - self._silence_from)

    @property
    def pause_start(self) -> float | None:
        """Where the open segment's current pause began (stream seconds); None while speech
        goes on or no segment is open. Identifies one pause for endpointing."""
        if self._phase is not _Phase.SPEECH or self._silence_from is None:
            return None
        return self._time(self._silence_from)

    @property
    def onset(self) -> float | None:
        """Where the open segment began (stream seconds): identifies it; None outside speech."""
        return self._time(self._onset_index) if self._phase is _Phase.SPEECH else None

    @property
    def voiced_ms(self) -> float:
        """How much of the open segment the model scored as speech, pauses left out (0
        outside speech): background talk runs on, a caller's turn has pauses."""
        if self._phase is not _Phase.SPEECH:
            return 0.0
        return self._ms(self._voiced_windows)

    def cut(self) -> SpeechEnd | None:
        """End the open segment now, pause or not (it proved not to be the caller's turn);
        None outside speech."""
        if self._phase is not _Phase.SPEECH:
            return None
        return self._end_segment(t=self._time(self._window_index))

    def audio_so_far(self) -> np.ndarray | None:
        """The open segment's audio from its prefix up to now, the pause so far included
        (what an end-of-turn model judges); None outside speech."""
        if self._phase is not _Phase.SPEECH:
            return None
        return np.concatenate(self._segment)

    def end_at_pause(self) -> SpeechEnd | None:
        """End the open segment now, at its current pause, before `min_silence_ms` (an
        endpointer decided the turn is over); None unless a segment is open and quiet."""
        if self._phase is not _Phase.SPEECH or self._silence_from is None:
            return None
        return self._end_segment(t=self._time(self._window_index))

    def open_segment(self) -> tuple[float, float, np.ndarray] | None:
        """(start, end so far, audio with prefix) of the open segment, ending where a pause
        began; None outside speech. What STT would get if the caller stopped here."""
        if self._phase is not _Phase.SPEECH:
            return None
        end_index = self._silence_from if self._silence_from is not None else self._window_index
        keep = end_index * self.window_samples - self._audio_start_sample
        audio = np.concatenate(self._segment)[:keep]
        return self._time(self._onset_index), self._time(end_index), audio

    def _time(self, window_index: int) -> float:
        return window_index * self.window_samples / self.sample_rate

    def _ms(self, n_windows: int) -> float:
        return n_windows * self.window_samples * 1000 / self.sample_rate

    def push(self, window: np.ndarray, probability: float) -> list[SegmenterEvent]:
        """Advance by one window; returns the events it caused, probability first."""
        p = self.params
        k = self._window_index
        self._window_index += 1
        if self.level_floor_dbfs is not None and window_dbfs(window) < self.level_floor_dbfs:
            probability = 0.0
        events: list[SegmenterEvent] = [VadProbability(self._time(k + 1), float(probability))]
        if self._phase is _Phase.SILENCE:
            self._voiced_windows = 0
        if probability >= p.deactivation_threshold:
            self._voiced_windows += 1

        if self._phase is _Phase.SILENCE:
            if probability >= p.activation_threshold:
                self._phase = _Phase.STARTING
                self._onset_index = k
                prefix = self._prefix_audio()
                self._audio_start_sample = k * self.window_samples - len(prefix)
                self._segment = [prefix, window]
                self._ring.clear()
                self._ring_samples = 0
            else:
                self._remember_prefix(window)
        elif self._phase is _Phase.STARTING:
            if probability < p.deactivation_threshold:
                # A blip shorter than min speech: its audio becomes prefix again.
                self._phase = _Phase.SILENCE
                for w in [*self._segment, window]:
                    self._remember_prefix(w)
                self._segment = []
            else:
                self._segment.append(window)
        else:
            self._segment.append(window)
            if self._ms(k + 1 - self._onset_index) >= p.max_speech_ms:
                # Endless "speech" (babble, a TV): cut it so STT gets a bounded segment and
                # the call moves on; if it goes on, a new segment starts after min speech.
                self._silence_from = None
                events.append(self._end_segment(t=self._time(k + 1)))
                return events
            if probability >= p.activation_threshold:
                self._silence_from = None
            elif probability < p.deactivation_threshold:
                if self._silence_from is None:
                    self._silence_from = k
                if self._ms(k + 1 - self._silence_from) >= p.min_silence_ms:
                    events.append(self._end_segment(t=self._time(k + 1)))
                    return events

        if (
            self._phase is _Phase.STARTING
            and self._ms(k + 1 - self._onset_index) >= p.min_speech_ms
        ):
            self._phase = _Phase.SPEECH
            self._silence_from = None
            events.append(
                SpeechStart(
                    t=self._time(k + 1),
                    onset=self._time(self._onset_index),
                    audio=np.concatenate(self._segment),
                    audio_start=self._audio_start_sample / self.sample_rate,
                )
            )
        return events

    def finish(self) -> list[SegmenterEvent]:
        """End of stream: close a segment that is still open (at its last speech window)."""
        if self._phase is not _Phase.SPEECH:
            self._phase = _Phase.SILENCE
            self._segment = []
            return []
        return [self._end_segment(t=self._time(self._window_index))]

    def _end_segment(self, t: float) -> SpeechEnd:
        end_index = self._silence_from if self._silence_from is not None else self._window_index
        keep = end_index * self.window_samples - self._audio_start_sample
        whole = np.concatenate(self._segment)
        audio = whole[:keep]
        # The trailing silence already seen is the next segment's natural prefix.
        self._remember_prefix(whole[keep:])
        event = SpeechEnd(
            t=t,
            start=self._time(self._onset_index),
            end=self._time(end_index),
            audio=audio,
            audio_start=self._audio_start_sample / self.sample_rate,
        )
        self._phase = _Phase.SILENCE
        self._segment = []
        self._silence_from = None
        return event

    def _prefix_audio(self) -> np.ndarray:
        """Exactly the last prefix_padding_ms of audio before now (less at stream start)."""
        if not self._ring:
            return np.zeros(0, dtype=np.int16)
        joined = np.concatenate(self._ring)
        return joined[len(joined) - min(len(joined), self._prefix_samples) :]

    def _remember_prefix(self, window: np.ndarray) -> None:
        if self._prefix_samples == 0 or not len(window):
            return
        self._ring.append(window)
        self._ring_samples += len(window)
        while self._ring and self._ring_samples - len(self._ring[0]) >= self._prefix_samples:
            self._ring_samples -= len(self._ring.popleft())
