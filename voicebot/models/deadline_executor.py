"""Engine worker threads that take the queued call needed soonest first.

Place in the flow: every model's worker (`executor.model_worker`) is one of these. Under
load several calls queue on one model, and first come, first served is the wrong order
for a caller: one call's third sentence (needed when its first two have played, seconds
away) would hold up another caller's first sentence (someone listening to silence), and a
speculative transcript of a pause would hold up the final one of a finished turn. So each
call submitted states when its result is needed (`ENGINE_DUE`, a `time.monotonic()`
instant, set by the agent in the task that waits for it) and the worker takes the earliest
due, ties and calls that state nothing in the order they came (due = submission time).
A running call is never interrupted: the order only decides who goes next.
"""

from __future__ import annotations

import atexit
import contextvars
import ctypes
import heapq
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

# When the engine call submitted from this context is needed (time.monotonic()); None: now.
ENGINE_DUE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "ENGINE_DUE", default=None
)

_Job = tuple[float, int, Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_live: weakref.WeakSet[DeadlineExecutor] = weakref.WeakSet()

_PR_SET_NAME = 15  # prctl(2)

_busy_lock = threading.Lock()
_busy = 0  # worker threads running a call now, all engines together


def busy_workers() -> int:
    """Engine worker threads running a call right now, over every model: the LLM reads it
    between tokens to leave a core to an STT or TTS that started beside it."""
    return _busy


def _count_busy(step: int) -> None:
    global _busy
    with _busy_lock:
        _busy += step


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the OS too (Linux: `top -H`, `ps -L`, /proc/*/task/*/
    comm; at most 15 bytes), so an operator sees which engine is using the CPU. Python 3.11
    names its threads for itself only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15] + b"\0", 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the name stays Python's own
        pass


class DeadlineExecutor(Executor):
    """`workers` threads (named `name`-N, each running `initializer(*initargs)` first)
    serving queued calls earliest-due first."""

    def __init__(
        self,
        workers: int,
        name: str,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._queue: list[_Job] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._broken: BaseException | None = None
        self._threads = [
            threading.Thread(
                target=self._serve, args=(initializer, initargs), name=f"{name}-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        _live.add(self)

    @property
    def queued(self) -> int:
        """Calls waiting for a thread (not the running ones)."""
        with self._ready:
            return len(self._queue)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        due = ENGINE_DUE.get()
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._broken is not None:
                raise RuntimeError(f"engine worker failed to start: {self._broken}")
            when = time.monotonic() if due is None else due
            heapq.heappush(self._queue, (when, next(self._order), future, fn, args, kwargs))
            self._ready.notify()
        return future

    def _break(self, exc: BaseException) -> None:
        """Fail every queued call and refuse new ones (as a broken ThreadPoolExecutor does)."""
        with self._ready:
            self._broken = exc
            for _, _, future, _, _, _ in self._queue:
                if future.set_running_or_notify_cancel():
                    future.set_exception(RuntimeError(f"engine worker failed to start: {exc}"))
            self._queue.clear()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._closed = True
            if cancel_futures:
                for _, _, future, _, _, _ in self._queue:
                    future.cancel()
                self._queue.clear()
            self._ready.notify_all()
        if wait:
            current = threading.current_thread()
            for thread in self._threads:
                if thread is not current:
                    thread.join()

    def _serve(self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
        name_os_thread(threading.current_thread().name)
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:  # a thread that cannot start must not leave waiters
                self._break(exc)
                return
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return  # closed and drained
                _, _, future, fn, args, kwargs = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited
            _count_busy(1)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the waiting caller, as Executor does
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                _count_busy(-1)
            del future, fn, args, kwargs  # drop the call's audio before waiting again


@atexit.register
def _finish_at_exit() -> None:
    # Daemon threads, so a forgotten executor cannot keep the interpreter alive; at exit
    # each finishes what it runs (a native engine call torn down mid-run can crash).
    for executor in list(_live):
        executor.shutdown(wait=True, cancel_futures=True)
