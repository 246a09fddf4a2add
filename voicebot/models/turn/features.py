"""The turn model's input: Whisper-style log-mel features of the last 8 s of a turn.

Place in the flow: the agent hands the turn model the caller's audio so far (16 kHz int16);
`turn_window` keeps the last 8 s, zero-padded in front when shorter (the speech always ends
at the right edge, as in training); `log_mel` turns that into the (80, 800) array the Smart
Turn v3 encoder takes: the window scaled to zero mean and unit variance, a centred 25 ms
(400-sample) periodic-Hann STFT every 10 ms, power spectrum, 80 Slaney-normalised mel bands
over 0-8 kHz, log10, floored 8 decades below the maximum and mapped by (x + 4) / 4 — the
recipe of Whisper's feature extractor with an 8 s chunk instead of 30 s.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 8
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
N_FFT = 400
HOP = 160
N_MELS = 80
N_FRAMES = WINDOW_SAMPLES // HOP  # 800: the STFT's one extra centred frame is dropped


def turn_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of `audio` (int16 or float in [-1, 1]) as float32, padded at the front."""
    x = np.asarray(audio).reshape(-1)
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
    if len(x) >= WINDOW_SAMPLES:
        return x[len(x) - WINDOW_SAMPLES :]
    out = np.zeros(WINDOW_SAMPLES, np.float32)
    out[WINDOW_SAMPLES - len(x) :] = x
    return out


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    hz = np.asarray(hz, np.float64)
    linear = hz * 3.0 / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    linear = mel * 200.0 / 3.0
    logarithmic = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, logarithmic, linear)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular filters, each scaled to unit area (Slaney)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


@lru_cache(maxsize=1)
def _sparse_filters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filters as (bins, weights, band starts) over their non-zero taps only.

    Applied with a gather and `np.add.reduceat`, not a matrix product: each band touches a
    handful of bins, and a BLAS call here would spin up OpenBLAS threads that fight the
    media loop for the machine's cores (18 ms instead of 1 ms on 2 busy cores).
    """
    dense = mel_filters()
    bins: list[np.ndarray] = []
    starts: list[int] = []
    for band in dense:
        (nonzero,) = np.nonzero(band)
        if not len(nonzero):
            raise AssertionError("a mel band with no FFT bin")  # not with these sizes
        starts.append(sum(len(b) for b in bins))
        bins.append(nonzero)
    taps = np.concatenate(bins)
    weights = np.concatenate([dense[k, b] for k, b in enumerate(bins)])
    return taps, weights, np.asarray(starts)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    # Periodic (not symmetric) Hann, as STFT libraries use for analysis.
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)


def log_mel(window: np.ndarray) -> np.ndarray:
    """(N_MELS, N_FRAMES) float32 features of one 8 s float32 window from `turn_window`."""
    x = np.asarray(window, np.float32)
    if x.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"need {WINDOW_SAMPLES} samples, got {x.shape}")
    # The scaling sees the front padding too: quiet turns are not made louder than speech
    # of the same level in a full window would be.
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:N_FRAMES]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # (frames, bins)
    taps, weights, starts = _sparse_filters()
    bands = np.add.reduceat(power[:, taps] * weights, starts, axis=1)  # (frames, mels)
    mel = np.log10(np.maximum(bands.T, 1e-10))
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


def features(audio: np.ndarray) -> np.ndarray:
    """Audio so far -> the model's (N_MELS, N_FRAMES) input."""
    return log_mel(turn_window(audio))
