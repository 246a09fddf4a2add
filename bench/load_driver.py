"""The driver the load benchmarks share (bench/ws_load.py, bench/sip_load.py,
bench/webrtc_load.py): the gateway under test as a real `voicebot serve` process with the
benchmark's settings, caller processes that run batches of calls on their own event loops,
CPU sampling of the server, and the sweep over N (time budget, a quiet machine before each
run, a failed run redone once when other processes took the CPU meanwhile, bisection of the
boundary, capacity). Each script keeps its transport's client, its measurements, verdict
and tables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import resource
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Log, affinity, bench_parser, proc_cpu, system_cpu

STALL_TICK_S = 0.005  # the callers' event-loop stall monitor

Row = dict[str, Any]


# -- the server under test ------------------------------------------------------------------


@dataclass(frozen=True)
class Engines:
    """The speech engines a gateway under test runs (the LLM is always the scripted one)."""

    label: str
    stt_model: str
    tts: str

    def env(self) -> dict[str, str]:
        return {"VOICEBOT_ENGINES__STT_MODEL": self.stt_model, "VOICEBOT_ENGINES__TTS": self.tts}


LIGHT = Engines("tiny.en + espeak-ng", "tiny.en", "espeak")
HEAVY = Engines("base + Piper", "base", "piper")


def server_env(engines: Engines, one_blas_thread: bool, **extra: str) -> dict[str, str]:
    """The gateway's settings for a load run: `engines`, the scripted LLM, no greeting, no
    `vad` events, call admission lifted (max_calls 1000), then `extra`.

    `one_blas_thread`: `OPENBLAS_NUM_THREADS=1`. With more than one CPU numpy's OpenBLAS runs
    a thread pool: a fork() (uvloop's, for espeak-ng) during a matmul on another thread (the
    Whisper feature extractor) can deadlock it (found by bench/ws_load.py), and a threaded
    BLAS call on the event loop waits for a busy second core. Pinned to one CPU, OpenBLAS
    runs single-threaded anyway."""
    env = {
        **engines.env(),
        "VOICEBOT_ENGINES__LLM": "scripted",
        "VOICEBOT_SERVER__MAX_CALLS": "1000",
        "VOICEBOT_AGENT__GREETING": "",
        "VOICEBOT_AGENT__VAD_EVENT_INTERVAL_MS": "0",
        **extra,
    }
    if one_blas_thread:
        env["OPENBLAS_NUM_THREADS"] = "1"
    return env


@contextlib.contextmanager
def serve(workdir: Path, env: Mapping[str, str], cpus: set[int] | None) -> Iterator[Any]:
    """A `voicebot serve` process on 127.0.0.1 (`tests/gateway_server.py`) with `env`,
    started on `cpus` (its threads and children inherit them); its `Gateway` handle."""
    from tests.gateway_server import gateway

    with contextlib.ExitStack() as stack:
        with affinity(cpus):
            gw = stack.enter_context(gateway(workdir, **env))
        yield gw


def log_problems(text: str) -> list[str]:
    """The WARNING, ERROR, CRITICAL and traceback lines of a server log."""
    return [
        line
        for line in text.splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)
    ]


class CpuSampler:
    """A thread sampling a process's CPU and the machine's every `period` seconds:
    `samples` of (clock(), own CPU s of all threads, reaped children's CPU s, main thread's
    CPU s, machine busy jiffies, machine total jiffies)."""

    def __init__(
        self, pid: int, period: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pid = pid
        self.period = period
        self.clock = clock
        self.samples: list[tuple[float, float, float, float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        with contextlib.suppress(OSError):  # the process has gone: no more samples
            own, children = proc_cpu(self.pid)
            main = proc_cpu(self.pid, self.pid)[0]
            busy, total = system_cpu()
            self.samples.append((self.clock(), own, children, main, busy, total))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def window(self, t0: float, t1: float, min_s: float = 0.0) -> dict[str, float] | None:
        """Between the first and last sample in [t0, t1] (None if fewer than two, or under
        `min_s` apart): seconds, and the process's own, children's and main thread's CPU in
        cores, the machine's busy share of all its CPUs."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < min_s:
            return None
        a, b = inside[0], inside[-1]
        dt = b[0] - a[0]
        return {
            "seconds": dt,
            "own": (b[1] - a[1]) / dt,
            "children": (b[2] - a[2]) / dt,
            "main_thread": (b[3] - a[3]) / dt,
            "machine": (b[4] - a[4]) / max(1, b[5] - a[5]),
        }


# -- the callers ----------------------------------------------------------------------------

# calls(context, batch, clock0, stalls) -> one result per call; `stalls` fills meanwhile.
Calls = Callable[[Any, Any, float, list[tuple[float, float]]], Coroutine[Any, Any, list[Any]]]


async def record_loop_stalls(
    stalls: list[tuple[float, float]], clock0: float, tick_s: float
) -> None:
    """Until cancelled: append (from, to) relative to `clock0` whenever this process's event
    loop could not run (a `tick_s` timer woke more than `tick_s` late)."""
    while True:
        due = time.monotonic() + tick_s
        await asyncio.sleep(tick_s)
        now = time.monotonic()
        if now - due > tick_s:
            stalls.append((due - clock0, now - clock0))


async def _batch(
    calls: Calls, context: Any, batch: Any, clock0: float
) -> tuple[list[Any], list[tuple[float, float]]]:
    stalls: list[tuple[float, float]] = []
    watcher = asyncio.create_task(record_loop_stalls(stalls, clock0, STALL_TICK_S))
    try:
        return await calls(context, batch, clock0, stalls), stalls
    finally:
        watcher.cancel()


def _caller_main(
    conn: Connection,
    calls: Calls,
    context: Any,
    cpus: set[int] | None,
    setup: Callable[[], None] | None,
) -> None:
    """A caller process: runs each batch it is sent on a fresh event loop (uvloop where
    installed) and sends back the calls' results, the loop's stalls and its CPU time."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    if setup is not None:
        setup()
    conn.send("ready")
    while (message := conn.recv()) is not None:
        batch, clock0 = message
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.monotonic()
        results, stalls = runner(_batch(calls, context, batch, clock0))
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        conn.send(
            {"calls": results, "stalls": stalls, "cpu_s": cpu, "wall_s": time.monotonic() - wall0}
        )
    conn.close()


class CallerPool:
    """Caller processes (spawned, on `cpus`), started as needed and kept until `close()`.
    Each runs `calls(context, batch, clock0, stalls)` (a module-level coroutine function of
    the script) for every batch it is sent, after `setup()` once."""

    def __init__(
        self,
        calls: Calls,
        context: Any,
        cpus: set[int] | None,
        setup: Callable[[], None] | None = None,
    ) -> None:
        self.args = (calls, context, cpus, setup)
        self.ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []

    def ensure(self, count: int, timeout_s: float = 120) -> None:
        """At least `count` processes, each ready."""
        new = []
        while len(self.procs) < count:
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(target=_caller_main, args=(child, *self.args), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)
            new.append(parent)
        for pipe in new:
            if not pipe.poll(timeout_s):
                raise RuntimeError("a caller process did not start")
            pipe.recv()

    def run(self, batches: Sequence[Any], clock0: float, timeout_s: float) -> list[dict[str, Any]]:
        """One batch to each of the first len(batches) processes, all starting their calls'
        clocks at `clock0` (CLOCK_MONOTONIC is system-wide); their reports, in order."""
        for pipe, batch in zip(self.pipes, batches, strict=False):
            pipe.send((batch, clock0))
        reports = []
        for pipe in self.pipes[: len(batches)]:
            if not pipe.poll(timeout_s):
                raise RuntimeError("a caller process did not finish")
            reports.append(pipe.recv())
        return reports

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> CallerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_stalls(stalls: Sequence[tuple[float, float]], t: np.ndarray) -> np.ndarray:
    """For each time in `t`: whether it fell inside one of `stalls` ((from, to), sorted)."""
    starts = np.asarray([a for a, _ in stalls], dtype=np.float64)
    ends = np.asarray([b for _, b in stalls], dtype=np.float64)
    i = np.searchsorted(starts, t, side="right") - 1
    return (i >= 0) & (t <= ends[np.maximum(i, 0)]) if len(stalls) else np.zeros(len(t), bool)


def stall_summary(reports: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The caller processes' event-loop stalls: count, total seconds, longest in ms."""
    stalls = [b - a for r in reports for a, b in r["stalls"]]
    return {"count": len(stalls), "total_s": sum(stalls), "max_ms": 1000 * max(stalls, default=0.0)}


# -- the sweep over N -----------------------------------------------------------------------


@dataclass
class Budget:
    """Benchmark time so far, not counting the waits for a quiet machine added to `waited`."""

    started: float = field(default_factory=time.perf_counter)
    waited: float = 0.0

    def used(self) -> float:
        return time.perf_counter() - self.started - self.waited

    def left(self, until_s: float, what: str, log: Log) -> bool:
        """Whether a run may still start `until_s` into the benchmark (logged when not)."""
        if self.used() < until_s:
            return True
        log(f"{what}: time budget spent, no more runs")
        return False


def retried(
    run: Callable[[], Row],
    gate: Callable[[], dict[str, float]],
    others_busy: Callable[[Row], bool],
    discarded: list[Row],
    log: Log,
) -> Row:
    """`gate()` (wait for a quiet machine), then `run()`; a run that failed while
    `others_busy(row)` (other processes took the CPU meanwhile) goes to `discarded` and is
    run once more. The row gets the gate's figures as `idle_gate`."""
    for attempt in range(2):
        waited = gate()
        row = run()
        row["idle_gate"] = waited
        if row["verdict"] == "ok" or not others_busy(row) or attempt:
            return row
        log(f"N={row['n']}: other processes used {row['others_cpu_pct']:.0f} % of a core "
            "during the run: discarded, once more")  # fmt: skip
        discarded.append(row)
    raise AssertionError("unreachable")


def capacity(rows: Sequence[Row]) -> int | None:
    """The largest N that passed ('ok'), every smaller N tried passing too."""
    best = None
    for r in sorted(rows, key=lambda r: r["n"]):
        if r["verdict"] != "ok":
            break
        best = r["n"]
    return best


def halfway(rows: Sequence[Row], time_left: Callable[[], bool]) -> int | None:
    """The N halfway between the capacity (0 if none) and the first N over it; None once
    they are within 10 % (at least 1) of each other, or no time is left."""
    good = capacity(rows) or 0
    bad = min((r["n"] for r in rows if r["verdict"] != "ok"), default=None)
    if bad is None or bad - good <= max(1, good // 10) or not time_left():
        return None
    return (good + bad) // 2


def run_sweep(
    run: Callable[[int], Row],
    ns: Iterable[int],
    *,
    time_left: Callable[[], bool],
    stop: Callable[[list[Row]], bool],
    bisect_steps: int,
    next_n: Callable[[list[Row]], int | None],
) -> list[Row]:
    """`run(n)` for each of `ns` while time is left, until `stop(rows)`; then up to
    `bisect_steps` runs at `next_n(rows)` (none once it is None). The rows by N."""
    rows: list[Row] = []
    for n in ns:
        if not time_left():
            break
        rows.append(run(n))
        if stop(rows):
            break
    for _ in range(bisect_steps):
        n = next_n(rows)
        if n is None:
            break
        rows.append(run(n))
    return sorted(rows, key=lambda r: r["n"])


def load_parser(
    doc: str | None, section: str, render_flag: str = "--render", wait_max: str = "20 min"
) -> argparse.ArgumentParser:
    """A load script's command line: --quick, --json, --results (its `section`),
    --wait-load L and `render_flag` JSON (no runs: `args.render`, see `common.rerender`)."""
    parser = bench_parser(doc, f"write the '{section[3:]}' section here")
    parser.add_argument(
        "--wait-load", type=float, metavar="L",
        help=f"first wait (up to {wait_max}) for the 1-minute load average to drop below L",
    )  # fmt: skip
    parser.add_argument(
        render_flag, type=Path, metavar="JSON", dest="render",
        help="no runs: print (and with --results write) the section of a saved --json run",
    )  # fmt: skip
    return parser
