"""What every benchmark shares: Markdown tables, and writing its own section of
bench/RESULTS.md without touching the others'."""

from __future__ import annotations

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
