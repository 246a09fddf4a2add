"""Engine workers serve the call needed soonest first (models/deadline_executor.py), and the
agent states when it needs each TTS sentence and transcript."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from voicebot.agent.clock import LiveClock
from voicebot.agent.playout import Playout
from voicebot.agent.reply import ReplyPipeline
from voicebot.models.deadline_executor import ENGINE_DUE, DeadlineExecutor
from voicebot.models.executor import model_worker, run_blocking


def _blocked(executor: DeadlineExecutor) -> threading.Event:
    """Occupy the executor's one thread until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(5)

    executor.submit(hold)
    assert started.wait(5)
    return release


def _submit_due(executor: DeadlineExecutor, due: float | None, fn, *args):  # type: ignore[no-untyped-def]
    token = ENGINE_DUE.set(due)
    try:
        return executor.submit(fn, *args)
    finally:
        ENGINE_DUE.reset(token)


def test_earliest_due_runs_first_and_ties_keep_their_order() -> None:
    executor = DeadlineExecutor(1, "test-edf")
    ran: list[str] = []
    release = _blocked(executor)
    now = time.monotonic()
    futures = [
        _submit_due(executor, now + 3.0, ran.append, "third sentence"),
        _submit_due(executor, None, ran.append, "no due (now)"),
        _submit_due(executor, now + 1.0, ran.append, "later, first"),
        _submit_due(executor, now + 1.0, ran.append, "later, second"),
        _submit_due(executor, now - 1.0, ran.append, "overdue"),
    ]
    release.set()
    for future in futures:
        future.result(5)
    assert ran == ["overdue", "no due (now)", "later, first", "later, second", "third sentence"]
    executor.shutdown()


def test_without_dues_it_is_first_come_first_served() -> None:
    executor = DeadlineExecutor(1, "test-fifo")
    ran: list[int] = []
    release = _blocked(executor)
    futures = [executor.submit(ran.append, i) for i in range(20)]
    release.set()
    for future in futures:
        future.result(5)
    assert ran == list(range(20))
    executor.shutdown()


def test_cancelled_errors_and_shutdown() -> None:
    executor = DeadlineExecutor(1, "test-cancel")
    ran: list[str] = []
    release = _blocked(executor)
    skipped = executor.submit(ran.append, "cancelled while queued")
    assert skipped.cancel()
    failing = executor.submit(int, "not a number")
    queued = executor.submit(ran.append, "dropped at shutdown")
    assert executor.queued == 3
    release.set()
    with pytest.raises(ValueError):
        failing.result(5)
    executor.shutdown(wait=True, cancel_futures=True)
    assert queued.cancelled() or ran == ["dropped at shutdown"]
    assert "cancelled while queued" not in ran
    with pytest.raises(RuntimeError):
        executor.submit(ran.append, "after shutdown")


def test_model_worker_threads_run_the_initializer_and_are_named() -> None:
    executor = model_worker("test-named", workers=2)
    names = {executor.submit(lambda: threading.current_thread().name).result(5) for _ in range(8)}
    assert names <= {"test-named-0", "test-named-1"}
    executor.shutdown()


def test_run_blocking_passes_the_callers_due_and_cancel_frees_the_queue() -> None:
    asyncio.run(_run_blocking_in_due_order())


async def _run_blocking_in_due_order() -> None:
    executor = model_worker("test-async")
    release = _blocked(executor)
    order: list[str] = []
    now = time.monotonic()

    async def needed_in(seconds: float, name: str) -> None:
        ENGINE_DUE.set(now + seconds)  # this task's own context
        await run_blocking(executor, order.append, name)

    late = asyncio.create_task(needed_in(2.0, "needed in 2 s"))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(needed_in(0.5, "cancelled"))
    await asyncio.sleep(0.01)
    soon = asyncio.create_task(needed_in(0.0, "needed now"))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(late, soon)
    assert order == ["needed now", "needed in 2 s"]
    executor.shutdown()


class _OneSecondTTS:
    """Says every sentence in 1 s of audio; notes when each synthesis said it was needed."""

    name = "one-second"

    def __init__(self) -> None:
        self.dues: list[tuple[str, float | None]] = []

    async def synthesize(self, text: str) -> np.ndarray:
        self.dues.append((text, ENGINE_DUE.get()))
        return np.full(16_000, 1000, np.int16)


def test_a_reply_needs_its_first_sentence_now_and_the_next_when_the_first_has_played() -> None:
    asyncio.run(_reply_dues())


async def _reply_dues() -> None:
    tts = _OneSecondTTS()
    playout = Playout()  # nothing plays it: all audio stays queued
    reply = ReplyPipeline(
        tts=tts, playout=playout, clock=LiveClock(), tts_timeout_s=5.0,
        on_error=lambda what, exc: pytest.fail(f"{what}: {exc}"),
    )  # fmt: skip
    start = time.monotonic()
    reply.start_texts(["First.", "Second.", "Third."])
    await reply.wait()
    assert [text for text, _ in tts.dues] == ["First.", "Second.", "Third."]
    ahead = [due - start for _, due in tts.dues if due is not None]
    assert len(ahead) == 3
    assert ahead[0] == pytest.approx(0.0, abs=0.2)
    assert ahead[1] == pytest.approx(1.0, abs=0.2)
    assert ahead[2] == pytest.approx(2.0, abs=0.2)
    assert ENGINE_DUE.get() is None  # the pipeline's setting did not leak into its caller


def test_a_worker_that_cannot_start_fails_its_calls_instead_of_leaving_them_waiting() -> None:
    def refuse() -> None:
        raise OSError("no such thread")

    executor = DeadlineExecutor(1, "test-broken", initializer=refuse)
    for thread in executor._threads:
        thread.join(5)
    with pytest.raises(RuntimeError, match="failed to start"):
        executor.submit(int, "1")
    executor.shutdown()


def test_worker_threads_carry_their_name_in_the_os() -> None:
    # `top -H` / /proc/<pid>/task/<tid>/comm show which engine uses the CPU.
    executor = DeadlineExecutor(1, "turn")
    try:
        tid = executor.submit(threading.get_native_id).result(timeout=5)
        comm = Path(f"/proc/self/task/{tid}/comm")
        if not comm.exists():
            pytest.skip("no /proc task names here")
        assert comm.read_text().strip() == "turn-0"
    finally:
        executor.shutdown()
