"""Streaming polyphase resamplers between wire rates and the canonical 16 kHz.

Each transport keeps one `StreamingResampler` per direction per call. The filter is the
same Kaiser-windowed FIR that `scipy.signal.resample_poly` designs, applied causally with
`scipy.signal.upfirdn` over a carried input history, so a signal fed in 20 ms frames gives
exactly the samples it gives fed whole (no clicks at frame edges) and, after the filter's
fixed group delay (`delay_out` samples), the same samples as `resample_poly` on the whole.
"""

from __future__ import annotations

from math import ceil, gcd

import numpy as np
from scipy.signal import firwin, upfirdn

from voicebot.audio.frames import float_to_pcm16

_KAISER_BETA = 5.0
_HALF_LEN_PER_RATE = 10  # taps per side per unit of max(up, down), as resample_poly


def design_filter(up: int, down: int) -> np.ndarray:
    """The anti-aliasing / anti-imaging FIR of `resample_poly(x, up, down)` (gain `up`)."""
    max_rate = max(up, down)
    half_len = _HALF_LEN_PER_RATE * max_rate
    taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", _KAISER_BETA))
    return taps * up


class StreamingResampler:
    """Rational-ratio resampler that keeps its filter state across chunks.

    After N input samples in total it has produced exactly ceil(N * up / down) output
    samples, so 20 ms in gives 20 ms out at every supported rate pair.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = gcd(in_rate, out_rate)
        self.up = out_rate // g
        self.down = in_rate // g
        self._identity = self.up == self.down == 1
        self._taps = design_filter(self.up, self.down) if not self._identity else np.ones(1)
        # Input samples one output needs: the filter spans this many input samples.
        self._span = ceil(len(self._taps) / self.up)
        self._history = np.zeros(0, dtype=np.float64)
        self._n_in = 0
        self._n_out = 0

    @property
    def delay_out(self) -> int:
        """Group delay of the filter, in output samples (an integer for supported pairs)."""
        if self._identity:
            return 0
        return (len(self._taps) - 1) // 2 // self.down

    def reset(self) -> None:
        """Forget all history, as if newly created."""
        self._history = np.zeros(0, dtype=np.float64)
        self._n_in = 0
        self._n_out = 0

    def process_float(self, samples: np.ndarray) -> np.ndarray:
        """Resample a chunk of float samples; returns float64 samples."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"resampler takes mono 1-D audio, got shape {x.shape}")
        if self._identity:
            return x.copy()
        n_total = self._n_in + len(x)
        target_out = -(-n_total * self.up // self.down)  # ceil
        if target_out == self._n_out:
            self._append_history(x, n_total)
            return np.zeros(0, dtype=np.float64)
        # Prepend history so the buffer starts at an input index whose upsampled position is
        # a multiple of `down`: then upfirdn's output grid coincides with the absolute one.
        hist_start = self._n_in - len(self._history)
        base = hist_start + (-hist_start) % self.down
        buf = self._window_from(base, x)
        y = upfirdn(self._taps, buf, self.up, self.down)
        first = self._n_out - base * self.up // self.down
        out = y[first : first + (target_out - self._n_out)]
        self._n_out = target_out
        self._append_history(x, n_total)
        return out

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample a chunk of int16 samples; returns int16 (rounded, clipped)."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            raise TypeError(f"process() takes int16 samples, got {pcm.dtype}")
        return float_to_pcm16(self.process_float(pcm.astype(np.float64) / 32768.0))

    def _window_from(self, base: int, x: np.ndarray) -> np.ndarray:
        # History holds the last len(history) inputs, ending at index n_in - 1.
        hist_start = self._n_in - len(self._history)
        return np.concatenate([self._history[base - hist_start :], x])

    def _append_history(self, x: np.ndarray, n_total: int) -> None:
        # Keep enough past input for the filter span plus alignment slack of `down` samples.
        keep = self._span + self.down
        joined = np.concatenate([self._history, x]) if len(self._history) else x
        self._history = joined[-keep:].copy()
        self._n_in = n_total


def resample_whole(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole int16 signal with the streaming filter (one call, same output)."""
    return StreamingResampler(in_rate, out_rate).process(samples)
