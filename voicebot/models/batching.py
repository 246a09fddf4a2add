"""Adaptive batching of one shared model across calls, on the model's own worker thread.

Place in the flow: the VAD (`agent.vad_runner.BatchedVad`) and the turn model
(`models.turn.runner.BatchedTurnModel`) are each one model for every call of the process.
Requests submitted while a run is in progress wait and go together in the next run: no
timer, so a lone call is never delayed, and under load each run serves every call with
work due. `select` decides which waiting requests may share a run (at most so many items;
for the VAD, at most one window per stream). A request whose future is already done
(cancelled by its call) is skipped; if the worker is gone, every waiting request fails
rather than waits for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")  # one item of a run: a window with its stream, a turn's audio


@dataclass(eq=False)
class BatchRequest(Generic[T]):
    """One caller's items, answered together: one result per item, in order."""

    items: list[T]
    future: asyncio.Future[np.ndarray]


Select = Callable[[list[BatchRequest[T]]], tuple[list[BatchRequest[T]], list[BatchRequest[T]]]]


class AdaptiveBatcher(Generic[T]):
    def __init__(
        self,
        run: Callable[[list[T]], np.ndarray],
        executor: Executor,
        what: str,
        select: Select[T],
    ) -> None:
        """`run(items)` (on `executor`) returns one result per item; `what` names the model
        in errors; `select(waiting)` -> (this run's requests, the rest)."""
        self._run = run
        self._executor = executor
        self._what = what
        self._select = select
        self._pending: list[BatchRequest[T]] = []
        self._running = False
        self.items_run = 0  # items of every run so far (cancelled requests' included)

    async def submit(self, items: list[T]) -> np.ndarray:
        """The results for `items`, from the next run that takes them. An idle worker starts
        in the loop's next turn, so requests of this turn (each call's own) share its run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(BatchRequest(items, future))
        if not self._running:
            self._running = True
            loop.call_soon(self._start_batch)
        return await future

    def start(self, items: list[T]) -> asyncio.Future[np.ndarray]:
        """`submit` for a caller that already gathered every item of its turn (the SIP media
        clock): an idle worker starts on them before this returns, so the caller's next
        work overlaps the run; a busy one takes them in its next run."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append(BatchRequest(items, future))
        if not self._running:
            self._running = True
            self._start_batch()
        return future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start_batch(self) -> None:
        batch, self._pending = self._select([r for r in self._pending if not r.future.done()])
        if not batch:
            self._running = False
            return
        loop = asyncio.get_running_loop()
        items = [item for request in batch for item in request.items]
        try:
            run = loop.run_in_executor(self._executor, self._run, items)
        except RuntimeError as exc:  # the executor is shut down: nobody may wait forever
            self._running = False
            for request in batch + self._pending:
                if not request.future.done():
                    request.future.set_exception(exc)
            self._pending = []
            return
        run.add_done_callback(lambda done: self._finish_batch(done, batch))

    def _finish_batch(self, done: asyncio.Future[np.ndarray], batch: list[BatchRequest[T]]) -> None:
        exc: BaseException | None = (
            RuntimeError(f"{self._what} run cancelled") if done.cancelled() else done.exception()
        )
        at = 0
        for request in batch:
            n = len(request.items)
            self.items_run += n
            if not request.future.done():
                if exc is not None:
                    request.future.set_exception(exc)
                else:
                    request.future.set_result(done.result()[at : at + n])
            at += n
        self._start_batch()
