"""SmartTurn: Pipecat's Smart Turn v3.2 (a Whisper-tiny encoder and a classifier, int8 ONNX)
on onnxruntime, with our own feature extraction.

Place in the flow: the turn runner (`runner.BatchedTurnModel`) hands it the audio of one or
more callers' turns so far, each at a pause; it returns, per turn, the probability that the
caller has finished (the graph ends in a sigmoid although its output is named `logits`).
Synchronous and CPU-bound (about 60 ms per turn on one core, plus 10 ms of features): it
runs on the runner's worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voicebot.models.turn.features import N_FRAMES, N_MELS, features
from voicebot.models.turn.weights import SMART_TURN_V3


class SmartTurn:
    name = "smart-turn-v3.2"
    _shared: SmartTurn | None = None
    _shared_lock = threading.Lock()

    def __init__(self, model_path: Path | None = None, intra_op_threads: int = 1) -> None:
        """The pinned file (verified; ModelUnavailableError if set-up has not fetched it),
        or `model_path` unchecked. One intra-op thread: on a shared machine, batches of
        several calls make better use of a core than threads fighting over two."""
        path = model_path if model_path is not None else SMART_TURN_V3.path()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [N_MELS, N_FRAMES]:
            raise ValueError(f"{path}: not a Smart Turn v3 graph (inputs {inputs})")
        self._input = inputs[0].name

    @classmethod
    def shared(cls) -> SmartTurn:
        """The process-wide instance over the pinned model."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def probabilities(self, turns: Sequence[np.ndarray]) -> np.ndarray:
        """P(turn complete) for each turn's audio so far (16 kHz int16, ending now)."""
        if not turns:
            return np.zeros(0, np.float32)
        batch = np.stack([features(audio) for audio in turns])
        (out,) = self._session.run(None, {self._input: batch})
        return np.asarray(out, np.float32).reshape(len(turns))

    def probability(self, audio: np.ndarray) -> float:
        return float(self.probabilities([audio])[0])
