"""Running the turn model for calls: batched across calls, on its own worker thread.

`BatchedTurnModel` is shared by every call of the process, like the VAD's `BatchedVad`:
turns submitted while a model run is in progress wait and go together in the next run
(adaptive batching: no timer, so a lone call is never delayed). A request whose caller
spoke again before its run started is cancelled by the agent and skipped, so a busy
machine spends nothing on pauses that are already over. Runs happen on one worker thread
at the engines' lower priority (`engines.nice`), like STT/LLM/TTS: at normal priority its
~60 ms runs took CPU from the shared SIP media clock, and at 50 calls 0.6 % of the bot's
packets went out late (bench/sip_load.py; 0 % with the model at engine priority). On a busy
machine a verdict then waits for the CPU (at nice 19 a 60 ms run was measured waiting
400 ms): the turn ends later, up to `agent.turn_max_silence_ms`, while the audio stays on
time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from voicebot.models.batching import AdaptiveBatcher, BatchRequest
from voicebot.models.executor import model_worker
from voicebot.models.turn.smart_turn import SmartTurn


class BatchedTurnModel:
    """One model run for the pending turns of all calls (a `TurnModel`)."""

    def __init__(
        self,
        model: SmartTurn | None = None,
        max_batch: int = 4,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_batch(turns, seconds)` is told the size and CPU time of every run.

        `max_batch` stays small: the model's cost grows linearly with the batch (measured:
        no saving per turn past 1), so a big batch would only make the first turn wait for
        the last."""
        self.model = model or SmartTurn.shared()
        self.name = self.model.name
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._batcher: AdaptiveBatcher[np.ndarray] = AdaptiveBatcher(
            self._timed_run, model_worker("turn"), "turn model", self._select
        )

    @property
    def turns(self) -> int:
        """Turns run so far."""
        return self._batcher.items_run

    async def probability(self, audio: np.ndarray) -> float:
        return float((await self._batcher.submit([audio]))[0])

    def _select(
        self, waiting: list[BatchRequest[np.ndarray]]
    ) -> tuple[list[BatchRequest[np.ndarray]], list[BatchRequest[np.ndarray]]]:
        return waiting[: self.max_batch], waiting[self.max_batch :]

    def _timed_run(self, turns: list[np.ndarray]) -> np.ndarray:
        began = time.thread_time()  # CPU time: what the run costs, not how long it waited
        probabilities = self.model.probabilities(turns)
        if self.on_batch is not None:
            self.on_batch(len(turns), time.thread_time() - began)
        return probabilities

    def close(self) -> None:
        self._batcher.close()
