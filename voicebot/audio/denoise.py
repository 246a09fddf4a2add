"""Noise suppression for legs without it (SIP: phones and trunks deliver raw line noise).

A stage before the VAD, one instance per call, frame in -> frame out:
- `SpectralGate`: stationary spectral gating, the algorithm of `noisereduce`, made streaming:
  a per-bin noise profile (mean and spread of the dB power) is learned only from frames the
  VAD calls non-speech, and bins that do not rise `n_std` spreads above it are attenuated.
  Sqrt-Hann windows at 50 % overlap reconstruct exactly; the cost is one frame (20 ms).
- `WebRtcSuppressor`: WebRTC's noise suppressor (PyPI webrtc-noise-gain), 10 ms blocks.
Both keep the canonical format; `bench/denoise_bench.py` measures what each does.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from voicebot.audio.frames import FRAME_SAMPLES


class NoiseSuppressor(Protocol):
    name: str
    latency_ms: float

    def process(self, frame: np.ndarray, noise_only: bool) -> np.ndarray:
        """One canonical frame in, one out. `noise_only`: the VAD says this is not speech
        (suppressors that learn a noise profile learn from these frames only)."""
        ...


class SpectralGate:
    name = "spectral-gate"

    def __init__(
        self,
        n_std: float = 1.5,
        attenuation_db: float = 18.0,
        profile_frames: int = 50,
        smoothing: float = 0.6,
    ) -> None:
        self.n_fft = 2 * FRAME_SAMPLES  # 40 ms window, 20 ms hop
        self.latency_ms = 20.0
        self.n_std = n_std
        self.floor = 10 ** (-attenuation_db / 20)
        self.alpha = 1.0 / profile_frames  # profile update rate
        self.smoothing = smoothing
        self._window = np.sqrt(np.hanning(self.n_fft + 1)[:-1]).astype(np.float64)
        self._prev_in = np.zeros(FRAME_SAMPLES)
        self._overlap = np.zeros(FRAME_SAMPLES)
        bins = self.n_fft // 2 + 1
        self._mean = np.zeros(bins)
        self._var = np.zeros(bins)
        self._learned = 0
        self._mask = np.ones(bins)
        kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
        self._kernel = kernel / kernel.sum()

    def process(self, frame: np.ndarray, noise_only: bool) -> np.ndarray:
        x = np.asarray(frame, dtype=np.float64)
        block = np.concatenate([self._prev_in, x])
        self._prev_in = x
        spectrum = np.fft.rfft(block * self._window)
        power_db = 10 * np.log10(np.abs(spectrum) ** 2 + 1e-10)
        if noise_only:
            self._learn(power_db)
        if self._learned >= 5:
            threshold = self._mean + self.n_std * np.sqrt(self._var)
            target = np.where(power_db > threshold, 1.0, self.floor)
            target = np.convolve(target, self._kernel, mode="same")  # no musical-noise bins
            # Open fast (onsets), close slowly (no chopped word endings).
            rate = np.where(target > self._mask, 0.0, self.smoothing)
            self._mask = rate * self._mask + (1 - rate) * target
            spectrum = spectrum * self._mask
        out = np.fft.irfft(spectrum, self.n_fft) * self._window
        result = self._overlap + out[:FRAME_SAMPLES]
        self._overlap = out[FRAME_SAMPLES:]
        return np.clip(np.rint(result), -32768, 32767).astype(np.int16)

    def _learn(self, power_db: np.ndarray) -> None:
        self._learned += 1
        a = max(self.alpha, 1.0 / self._learned)  # plain average until the window fills
        delta = power_db - self._mean
        self._mean += a * delta
        self._var = (1 - a) * (self._var + a * delta * delta)


class WebRtcSuppressor:
    name = "webrtc-ns"
    latency_ms = 6.0  # measured: its 256-point FFT over 160-sample blocks delays 96 samples

    def __init__(self, level: int = 2) -> None:
        from webrtc_noise_gain import AudioProcessor

        if not 0 <= level <= 4:
            raise ValueError("webrtc noise suppression level is 0..4")
        self._processor = AudioProcessor(0, level)

    def process(self, frame: np.ndarray, noise_only: bool) -> np.ndarray:
        pcm = np.asarray(frame, dtype=np.int16).tobytes()
        half = len(pcm) // 2
        out = self._processor.Process10ms(pcm[:half]).audio
        out += self._processor.Process10ms(pcm[half:]).audio
        return np.frombuffer(out, np.int16).copy()


def make_suppressor(kind: str) -> NoiseSuppressor | None:
    if kind == "off":
        return None
    if kind == "spectral":
        return SpectralGate()
    if kind == "webrtc":
        return WebRtcSuppressor()
    raise ValueError(f"noise suppression must be off, spectral or webrtc, not {kind!r}")
