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

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
        self._pending: list[_Request] = []
        self._running = False
        self._executor = model_worker("turn")
        self.turns = 0

    async def probability(self, audio: np.ndarray) -> float:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append(_Request(audio, future))
        if not self._running:
            self._running = True
            loop.call_soon(self._start_batch)
        return await future

    def _start_batch(self) -> None:
        self._pending = [r for r in self._pending if not r.future.done()]
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if not batch:
            self._running = False
            return
        loop = asyncio.get_running_loop()
        try:
            run = loop.run_in_executor(self._executor, self._timed_run, [r.audio for r in batch])
        except RuntimeError as exc:  # the executor is shut down: nobody may wait forever
            self._running = False
            for request in batch + self._pending:
                if not request.future.done():
                    request.future.set_exception(exc)
            self._pending = []
            return
        run.add_done_callback(lambda done: self._finish_batch(done, batch))

    def _timed_run(self, turns: list[np.ndarray]) -> np.ndarray:
        began = time.thread_time()  # CPU time: what the run costs, not how long it waited
        probabilities = self.model.probabilities(turns)
        if self.on_batch is not None:
            self.on_batch(len(turns), time.thread_time() - began)
        return probabilities

    def _finish_batch(self, done: asyncio.Future[np.ndarray], batch: list[_Request]) -> None:
        exc: BaseException | None = (
            RuntimeError("turn model run cancelled") if done.cancelled() else done.exception()
        )
        for k, request in enumerate(batch):
            self.turns += 1
            if request.future.done():
                continue
            if exc is not None:
                request.future.set_exception(exc)
            else:
                request.future.set_result(float(done.result()[k]))
        self._start_batch()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Request:
    audio: np.ndarray
    future: asyncio.Future[float]
