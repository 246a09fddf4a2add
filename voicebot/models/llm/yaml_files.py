"""Reading the scripted engines' YAML: the user's file, or the one shipped in this package.

Place in the flow: the scripted LLM (`default_script.yaml`) and the front desk's business
profile (`front_desk.yaml`) are both loaded through `load_yaml` when their engine is built;
any read or parse failure is one `EngineError` naming what was being loaded.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from voicebot.models.base import EngineError


def load_yaml(path: str | Path | None, packaged: str, what: str) -> Any:
    """The YAML at `path`, or without one the packaged file `packaged` (empty -> {})."""
    try:
        if path is None:
            text = resources.files("voicebot.models.llm").joinpath(packaged).read_text("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        return yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EngineError(f"cannot load {what} {path}: {exc}") from exc
