"""InputStages: a call's audio on its way in, from the transport's frame to VAD events.

Place in the flow: the first half of the session's frame step (`begin_frame`) checks the
frame and runs it through the echo canceller (the bot's own voice removed, for legs that
have one: SIP), the noise suppressor, then buffers it into the VAD windows now due. The
VAD model runs on those outside (batched across calls, or inline); in the second half its
probabilities come back here to become speech_start / speech_end events and the
rate-limited `vad` levels. What the bot sent each tick is fed back as the echo reference.
"""

from __future__ import annotations

import numpy as np

from voicebot.agent.config import AgentConfig
from voicebot.audio.denoise import NoiseSuppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.models.vad import SpeechEnd, SpeechStart, VadProbability, VoiceActivityDetector


def check_frame(frame: np.ndarray) -> np.ndarray:
    """The frame as an array; ValueError unless it is one canonical 20 ms int16 frame."""
    pcm = np.asarray(frame)
    if pcm.dtype != np.int16 or pcm.shape != (FRAME_SAMPLES,):
        raise ValueError(
            f"frame must be {FRAME_SAMPLES} int16 samples, got {pcm.dtype} {pcm.shape}"
        )
    return pcm


class InputStages:
    def __init__(
        self,
        vad: VoiceActivityDetector,
        echo_canceller: EchoCanceller | None = None,
        denoiser: NoiseSuppressor | None = None,
    ) -> None:
        self.vad = vad
        # Either is None when the leg has none (WebSocket, WebRTC: the browser does both).
        self.echo_canceller = echo_canceller
        self.denoiser = denoiser

    def windows(self, pcm: np.ndarray) -> list[np.ndarray]:
        """Echo removed, then noise, then the VAD windows now due (at most one per frame)."""
        if self.echo_canceller is not None:
            pcm = self.echo_canceller.process(pcm)
        if self.denoiser is not None:
            # Suppressors learn the noise from frames the VAD does not think are speech.
            segmenter = self.vad.segmenter
            quiet = not (segmenter.in_speech or segmenter.speech_pending)
            pcm = self.denoiser.process(pcm, noise_only=quiet)
        return self.vad.windows(pcm)

    def events(
        self, window: np.ndarray, probability: float
    ) -> list[VadProbability | SpeechStart | SpeechEnd]:
        """One window's model output through the segmenter."""
        return self.vad.on_probability(window, probability)

    def sent(self, frame: np.ndarray | None) -> None:
        """What the bot sent this tick (None: silence), the echo canceller's reference."""
        if self.echo_canceller is not None:
            self.echo_canceller.reference(frame)


class VadLevels:
    """The `vad` events: the peak probability over each `vad_event_interval_ms` (0: none)."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._last_t = -1.0  # when the last level went out; -1: none yet
        self._peak = 0.0  # highest probability since then

    def level(self, event: VadProbability) -> float | None:
        """The level to publish at this window, or None (not due, or levels are off)."""
        interval = self._config.vad_event_interval_ms / 1000
        if interval <= 0:
            return None
        self._peak = max(self._peak, event.probability)
        if event.t - self._last_t < interval:
            return None
        peak, self._peak, self._last_t = self._peak, 0.0, event.t
        return peak
