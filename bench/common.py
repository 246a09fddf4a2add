"""What every benchmark in bench/ shares: its command line (--quick, --json, --results),
its progress log, Markdown tables and its own section of bench/RESULTS.md, number formatting
and percentiles, and what the machine and its processes are doing (CPU model, package
versions, load, /proc CPU counters, the gateway's `GET /metrics`). The load scripts' own
driver (gateway process, caller processes, the sweep over N) is bench/load_driver.py."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Log = Callable[[str], None]


class StderrLog:
    """Progress lines on stderr, stamped with the seconds since `started` (see `restart`)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    def restart(self) -> float:
        """Count from now (after a wait that is no part of the run); returns the new start."""
        self.started = time.perf_counter()
        return self.started


def bench_parser(
    doc: str | None, results_help: str, quick_help: str = "short smoke run (< 1 min)"
) -> argparse.ArgumentParser:
    """The options every benchmark has: --quick, --json PATH, --results PATH."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, help="write all figures as JSON here")
    parser.add_argument("--results", type=Path, help=results_help)
    return parser


# -- figures and Markdown -----------------------------------------------------------------


def pct(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The q-th percentile, None for no values."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else None


def dist(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, p95 and max of `values` (None where there are none)."""
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "max": max(values, default=None),
    }


def percentile_us(ns: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile of nanoseconds, in microseconds."""
    return float(np.percentile(np.asarray(ns, np.float64), q)) / 1000.0


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: `value` with `digits` decimals, "-" for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
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


def rerender(
    path: Path, render: Callable[[dict[str, Any]], str | Sequence[str]], results: Path | None
) -> int:
    """No runs: the section(s) of a saved --json run, printed and written into `results`."""
    publish(render(json.loads(path.read_text())), results_path=results)
    return 0


def finish(
    res: dict[str, Any],
    render: Callable[[dict[str, Any]], str | Sequence[str]],
    args: argparse.Namespace,
    log: StderrLog,
    json_default: Callable[[Any], Any] | None = str,
    loadavg_digits: int | None = 2,
) -> int:
    """The end of a run: its total time (since `log.started`) and the load average at the
    end into `res`, then its section(s) printed and written (`args.json`, `args.results`)."""
    res["total_seconds"] = time.perf_counter() - log.started
    res["loadavg_at_end"] = loadavg(loadavg_digits)
    log("done")
    publish(render(res), res, args.json, args.results, json_default)
    return 0


# -- the machine and its processes (Linux /proc) -------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" if it cannot be read)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags of the CPU that onnxruntime's kernels choose by (from /proc/cpuinfo)."""
    wanted = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
              "avx512_bf16", "amx_tile")  # fmt: skip
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in wanted if f in have]
    return []


def package_version(package: str) -> str:
    """An installed distribution's version, "?" if it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def utc_now() -> str:
    """The date and time of a run, as its section says it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def loadavg(digits: int | None = 2) -> list[float]:
    """The 1-, 5- and 15-minute load averages, to `digits` decimals (None: as the kernel's
    fixed point gives them)."""
    return [x if digits is None else round(x, digits) for x in os.getloadavg()]


def machine_info(packages: Sequence[str] | None = None, **fields: Any) -> dict[str, Any]:
    """What a run's JSON says of the machine: date_utc, nproc, cpu_model, then `fields`
    (a script's own, in order), python, the versions of `packages` and platform."""
    info = {"date_utc": utc_now(), "nproc": os.cpu_count(), "cpu_model": cpu_model(), **fields}
    info["python"] = platform.python_version()
    if packages is not None:
        info["packages"] = {p: package_version(p) for p in packages}
    info["platform"] = platform.platform()
    return info


def first_core() -> int:
    """The core a one-core benchmark runs on: 0 if this process may use it."""
    allowed = os.sched_getaffinity(0)
    return 0 if 0 in allowed else min(allowed)


def wait_for_load(
    limit: float, max_wait_s: float, log: Log, busy: Callable[[], list[str]] | None = None
) -> tuple[float, float, bool]:
    """Poll every 30 s until the 1-minute load average is below `limit` (and `busy()`, if
    given, names no other busy process), or `max_wait_s` has passed:
    (load average, seconds waited, whether it got quiet)."""
    began = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        others = busy() if busy is not None and load < limit else []
        waited = time.monotonic() - began
        if load < limit and not others:
            log(f"load average {load:.2f} < {limit:g} after {waited:.0f} s: starting")
            return load, waited, True
        if waited >= max_wait_s:
            log(f"load average still {load:.2f} after {waited:.0f} s: starting anyway")
            return load, waited, False
        log(f"load average {load:.2f}" + (f", busy: {others[0][:60]}" if others else "")
            + f" (limit {limit:g}): waiting")  # fmt: skip
        time.sleep(30)


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


class Metrics:
    """The samples of one scrape of the gateway's `GET /metrics`: name -> [(labels, value)]."""

    def __init__(self, samples: dict[str, list[tuple[dict[str, Any], float]]]) -> None:
        self.samples = samples

    @classmethod
    def scrape(cls, http: str) -> Metrics:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{http}/metrics", timeout=10, trust_env=False).text
        samples: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
        return cls(samples)

    def total(self, name: str) -> float:
        """The sum over all label sets."""
        return sum(v for _, v in self.samples.get(name, []))

    def by(self, name: str, label: str) -> dict[str, float]:
        """Label value -> sample value."""
        return {lab.get(label, "?"): v for lab, v in self.samples.get(name, [])}

    def mean(self, name: str) -> float | None:
        """A histogram's mean (sum / count), None before its first observation."""
        count = self.total(f"{name}_count")
        return self.total(f"{name}_sum") / count if count else None

    def hist(self, name: str) -> dict[str, Any]:
        """A histogram: count, mean, the buckets holding the median and p95, all buckets."""
        count = self.total(f"{name}_count")
        samples = self.samples.get(f"{name}_bucket", [])
        buckets = sorted((float(lab["le"]), v) for lab, v in samples if "le" in lab)

        def upper_bound(q: float) -> float | None:
            return next((le for le, v in buckets if count and v >= q * count), None)

        return {
            "count": count,
            "mean": self.mean(name),
            "p50_bucket": upper_bound(0.5),
            "p95_bucket": upper_bound(0.95),
            "buckets": buckets,
        }
