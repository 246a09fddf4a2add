"""What every benchmark shares: Markdown tables, writing its own section of
bench/RESULTS.md without touching the others', and what the machine and its processes
are doing (CPU model, package versions, /proc CPU counters)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def update_results(path: Path, sections: str | Sequence[str]) -> None:
    """Replace (or append) each '## Title' section, titled by its first line; keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    for section in [sections] if isinstance(sections, str) else sections:
        title = section.splitlines()[0]
        pattern = re.compile(r"^" + re.escape(title) + r"[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
        block = section.rstrip() + "\n\n"
        if pattern.search(text):
            text = pattern.sub(lambda _, b=block: b, text, count=1)
        else:
            text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def publish(
    sections: str | Sequence[str],
    res: dict[str, Any] | None = None,
    json_path: Path | None = None,
    results_path: Path | None = None,
    json_default: Callable[[Any], Any] | None = str,
) -> None:
    """The end of every benchmark: print its section(s); write all figures (`res`) as JSON
    and the section(s) into RESULTS.md where asked."""
    print(sections if isinstance(sections, str) else "\n".join(sections))
    if json_path is not None and res is not None:
        json_path.write_text(json.dumps(res, indent=2, default=json_default) + "\n")
    if results_path is not None:
        update_results(results_path, sections)


# -- the machine and its processes (Linux /proc) -------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" if it cannot be read)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def package_version(package: str) -> str:
    """An installed distribution's version, "?" if it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def system_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    return total - values[3] - values[4], total


def idle_gate(
    max_wait_s: float, log: Callable[[str], None], max_busy_pct: float, sample_s: float,
    poll_s: float,
) -> dict[str, float]:  # fmt: skip
    """Wait (up to `max_wait_s`) until other processes leave the machine mostly idle: all
    CPUs together under `max_busy_pct` busy over `sample_s`, checked every `poll_s`, while
    nothing of the benchmark's own runs."""
    waited = 0.0
    while True:
        busy0, total0 = system_cpu()
        time.sleep(sample_s)
        busy1, total1 = system_cpu()
        busy = 100 * (busy1 - busy0) / max(1, total1 - total0)
        if busy < max_busy_pct or waited >= max_wait_s:
            if waited:
                log(f"machine {busy:.0f} % busy after waiting {waited:.0f} s")
            return {"busy_pct": busy, "waited_s": waited}
        if not waited:
            log(f"machine {busy:.0f} % busy before the run: waiting up to {max_wait_s:.0f} s")
        time.sleep(poll_s - sample_s)
        waited += poll_s


def proc_cpu(pid: int, tid: int | None = None) -> tuple[float, float]:
    """CPU seconds of a process (all its threads), or of one of its threads: (utime + stime,
    cutime + cstime of the process's reaped children)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own, (int(fields[13]) + int(fields[14])) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of a process (VmHWM), MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Run the block with this process (and what it starts meanwhile) on `cpus`."""
    if not cpus:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def metric_samples(http: str) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """Every sample of the gateway's `GET /metrics`: name -> [(labels, value)]."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{http}/metrics", timeout=10, trust_env=False).text
    samples: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


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
