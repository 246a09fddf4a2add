"""What every benchmark shares: Markdown tables, writing its own section of
bench/RESULTS.md without touching the others', and what the machine and its processes
are doing (CPU model, package versions, /proc CPU counters)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
from collections.abc import Sequence
from pathlib import Path


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


def proc_stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """Fields of /proc/PID/stat (or of one thread's) after the command name; field 11 is
    utime, 12 stime, 13 cutime, 14 cstime (in CLK_TCK units)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    return Path(path).read_text().rsplit(")", 1)[1].split()


def proc_peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of a process (VmHWM), MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None
