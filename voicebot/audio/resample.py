"""Streaming polyphase resamplers between wire rates and the canonical 16 kHz.

Each transport keeps one `StreamingResampler` per direction per call. The filter is the
same Kaiser-windowed FIR that `scipy.signal.resample_poly` designs, applied causally in
polyphase form over a carried input history, so a signal fed in 20 ms frames gives exactly
the samples it gives fed whole (no clicks at frame edges) and, after the filter's fixed
group delay (`delay_out` samples), the same samples as `resample_poly` on the whole.

Output sample m is the dot product of the K newest inputs at or before m * down / up with
one of `up` sub-filters (phase (m * down) mod up): a gather and one multiply-add per
chunk, with no per-call filter set-up. `resample_many` runs the same step for many streams
at once (one 2-D gather for every SIP call of a media tick).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import ceil, gcd

import numpy as np

_KAISER_BETA = 5.0
_HALF_LEN_PER_RATE = 10  # taps per side per unit of max(up, down), as resample_poly
_SCALE = 32768.0


def design_filter(up: int, down: int) -> np.ndarray:
    """The anti-aliasing / anti-imaging FIR of `resample_poly(x, up, down)` (gain `up`)."""
    # Imported here, not at module level: scipy.signal costs ~1.5 s to import, and a
    # process that never resamples (`voicebot vad` on a 16 kHz file) should not pay it.
    from scipy.signal import firwin

    max_rate = max(up, down)
    half_len = _HALF_LEN_PER_RATE * max_rate
    taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", _KAISER_BETA))
    return taps * up


@lru_cache(maxsize=32)
def _polyphase(up: int, down: int) -> np.ndarray:
    """Sub-filters, one row per phase, reversed to apply to inputs oldest first:
    row p, column K-1-j holds h[p + j * up] (zero past the filter's end)."""
    taps = design_filter(up, down)
    k = ceil(len(taps) / up)
    padded = np.zeros(k * up)
    padded[: len(taps)] = taps
    bank = padded.reshape(k, up).T[:, ::-1].copy()
    bank.flags.writeable = False
    return bank


@dataclass(frozen=True)
class _Plan:
    """Which buffer rows and sub-filters give a chunk's outputs, in one of three forms:
    - `stride` set: the outputs come in runs of `up`, run q using rows first + q * stride
      with sub-filters `phases` in order (an integer ratio, e.g. 8 <-> 16 kHz: one matrix
      product for the chunk);
    - `groups` set: per sub-filter p, outputs o, o + up, ... (count c) use rows r, r + down,
      ... (a long chunk at a fractional ratio, e.g. a whole TTS utterance 22.05 -> 16 kHz:
      one matrix-vector product per sub-filter);
    - else output i uses row rows[i] and sub-filter phases[i] (a gather: short chunks at a
      ratio with many sub-filters)."""

    rows: np.ndarray
    phases: np.ndarray
    first: int = 0
    runs: int = 0
    stride: int = 0
    groups: tuple[tuple[int, int, int, int], ...] = ()  # (phase, first output, count, row)
    up: int = 1
    down: int = 1


_CACHED_CHUNK = 4096  # plans for stream chunks are reused; a whole utterance's is not


def _plan(up: int, down: int, k: int, n_in: int, n_new: int, keep: int) -> _Plan:
    """The plan for a chunk; cached for the small chunks of streams (a few sizes recur),
    computed afresh for long ones (every TTS utterance has its own length)."""
    if n_new <= _CACHED_CHUNK:
        return _cached_plan(up, down, k, n_in, n_new, keep)
    return _make_plan(up, down, k, n_in, n_new, keep)


def _make_plan(up: int, down: int, k: int, n_in: int, n_new: int, keep: int) -> _Plan:
    """The plan for `n_new` inputs after `n_in` (only n_in mod down matters) with a buffer
    of the last `keep` inputs before the chunk, then the chunk."""
    n_out = -(-n_in * up // down)
    target = -(-(n_in + n_new) * up // down)
    m = np.arange(n_out, target)
    newest = m * down // up  # absolute index of the newest input each output uses
    rows = newest - (k - 1) - (n_in - keep)
    phases = (m * down) % up
    if (up == 1 or down == 1) and n_out % up == 0 and len(m) % up == 0 and len(m):
        # Within a run of `up` outputs all use the same newest input.
        return _Plan(rows, phases[:up].copy(), int(rows[0]), len(m) // up, down)
    if len(m) >= 4 * up:
        # Outputs of one phase recur every `up` outputs, their newest input `down` later.
        groups = tuple(
            (int(phases[o]), o, len(range(o, len(m), up)), int(rows[o]))
            for o in range(min(up, len(m)))
        )
        return _Plan(rows, phases, groups=groups, up=up, down=down)
    return _Plan(rows, phases)


_cached_plan = lru_cache(maxsize=256)(_make_plan)


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
        self._bank = _polyphase(self.up, self.down) if not self._identity else np.ones((1, 1))
        self._k = self._bank.shape[1]  # input samples one output spans
        self._keep = self._k + self.down  # history: the span plus alignment slack
        self.reset()

    @property
    def delay_out(self) -> int:
        """Group delay of the filter, in output samples (an integer for supported pairs)."""
        if self._identity:
            return 0
        taps = 2 * _HALF_LEN_PER_RATE * max(self.up, self.down) + 1
        return (taps - 1) // 2 // self.down

    def reset(self) -> None:
        """Forget all history, as if newly created (the past counts as silence)."""
        self._history = np.zeros(self._keep, dtype=np.float64)  # on the int16 scale
        self._n_in = 0

    def _step_plan(self, n_new: int) -> _Plan:
        # Only n_in mod down matters: a shift by `down` inputs shifts outputs by `up`.
        return _plan(self.up, self.down, self._k, self._n_in % self.down, n_new, self._keep)

    def skip_silence(self, n: int) -> bool:
        """If the filter holds only silence, account for `n` silent input samples without
        computing them (their output is all zeros) and return True; else False and nothing
        changes (process them)."""
        if self._history.any():
            return False
        self._n_in += n
        return True

    def process_float(self, samples: np.ndarray) -> np.ndarray:
        """Resample a chunk of float samples in [-1, 1]; returns float64 samples."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"resampler takes mono 1-D audio, got shape {x.shape}")
        return self._run(x * _SCALE) / _SCALE

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample a chunk of int16 samples; returns int16 (rounded, clipped)."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            raise TypeError(f"process() takes int16 samples, got {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"resampler takes mono 1-D audio, got shape {pcm.shape}")
        if self._identity:  # a 16 kHz wire: nothing to filter or round
            return pcm.copy()
        return _to_pcm16(self._run(pcm.astype(np.float64)))

    def _run(self, x: np.ndarray) -> np.ndarray:
        # Works on the int16 scale (the history too): no rescaling on the int16 path.
        if self._identity:
            return x.copy()
        plan = self._step_plan(len(x))
        buf = np.concatenate([self._history, x])
        self._history = buf[-self._keep :]
        self._n_in += len(x)
        return _apply(plan, buf[np.newaxis], self._bank, self._k)[0]


def resample_many(resamplers: Sequence[StreamingResampler], chunks: np.ndarray) -> np.ndarray:
    """One equal-length int16 chunk per stream (rows of `chunks`) through each stream's own
    resampler, all of the same rate pair: the same samples as `process` row by row, with
    one gather and one multiply-add for all of them."""
    pcm = np.asarray(chunks)
    if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[0] != len(resamplers):
        raise ValueError(f"need one int16 row per resampler, got {pcm.dtype} {pcm.shape}")
    if not resamplers:
        return np.zeros((0, 0), np.int16)
    first = resamplers[0]
    pair = (first.up, first.down)
    if any((r.up, r.down) != pair for r in resamplers):
        raise ValueError("resample_many needs streams of one rate pair")
    if first._identity:
        return pcm.copy()
    n_new = pcm.shape[1]
    phase = first._n_in % first.down
    if any(r._n_in % r.down != phase for r in resamplers):
        # Streams at different sub-sample phases (odd chunk sizes): one by one.
        return np.stack([r.process(row) for r, row in zip(resamplers, pcm, strict=True)])
    plan = first._step_plan(n_new)
    buf = np.concatenate([np.stack([r._history for r in resamplers]), pcm], axis=1)
    keep = first._keep
    for r, row in zip(resamplers, buf, strict=True):
        r._history = row[-keep:]
        r._n_in += n_new
    return _to_pcm16(_apply(plan, buf, first._bank, first._k))


def _apply(plan: _Plan, buf: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Outputs of the plan for each row (stream) of a C-contiguous float64 `buf`: shape
    (streams, outputs)."""
    streams, width = buf.shape
    item = buf.itemsize
    if plan.stride:
        # Run q's window is buf[:, first + q*stride : ... + k]: a strided view, no copy.
        runs = np.ndarray(
            (streams, plan.runs, k), np.float64, buf, plan.first * item,
            (width * item, plan.stride * item, item),
        )  # fmt: skip
        return (runs @ bank[plan.phases].T).reshape(streams, -1)
    if plan.groups:
        out = np.empty((streams, len(plan.rows)))
        for phase, first, count, row in plan.groups:
            group = np.ndarray(
                (streams, count, k), np.float64, buf, row * item,
                (width * item, plan.down * item, item),
            )  # fmt: skip
            out[:, first :: plan.up] = group @ bank[phase]
        return out
    if not len(plan.rows):
        return np.zeros((streams, 0))
    windows = np.ndarray(
        (streams, width - k + 1, k), np.float64, buf, 0, (width * item, item, item)
    )
    return np.einsum("sij,ij->si", windows[:, plan.rows], bank[plan.phases])


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    """Round to nearest and clip (never wrap) samples already on the int16 scale."""
    return np.clip(np.rint(x, out=x), -32768, 32767, out=x).astype(np.int16)


def resample_whole(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole int16 signal with the streaming filter (one call, same output)."""
    return StreamingResampler(in_rate, out_rate).process(samples)


def to_canonical(rate: int) -> StreamingResampler:
    """A transport's input resampler: `rate` -> 16 kHz (an identity copy at 16 kHz)."""
    return StreamingResampler(rate, 16000)


def from_canonical(rate: int) -> StreamingResampler:
    """A transport's output resampler: 16 kHz -> `rate` (an identity copy at 16 kHz)."""
    return StreamingResampler(16000, rate)


def prepare(rates: Sequence[int]) -> None:
    """Design the filters to and from these wire rates now, off any event loop: the first
    design imports scipy.signal (~1 s), which in a call's first tick would stall every call."""
    for rate in rates:
        to_canonical(rate)
        from_canonical(rate)
