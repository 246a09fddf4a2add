"""End-of-turn detection: is the caller done, or only pausing?

`TurnModel` (base.py) is the seam the agent's endpointer asks at a pause; `SmartTurn` is
Pipecat's Smart Turn v3.2 ONNX model with our own Whisper log-mel features (features.py),
its weights pinned in weights.py; `BatchedTurnModel` runs it for all calls, batched, off the
event loop; `load_turn_model` builds that, or says why it cannot (the agent then keeps the
fixed silence rule).
"""

from __future__ import annotations

import logging

import numpy as np

from voicebot.models.turn.base import TurnModel
from voicebot.models.turn.features import SAMPLE_RATE
from voicebot.models.turn.runner import BatchedTurnModel
from voicebot.models.turn.smart_turn import SmartTurn

log = logging.getLogger("voicebot.models")


def load_turn_model(**runner_options: object) -> BatchedTurnModel | None:
    """The shared Smart Turn model behind a batched runner, or None (logged) when its file
    is missing or broken: end of turn then falls back to the fixed silence rule."""
    try:
        model = SmartTurn.shared()
        model.probability(np.zeros(SAMPLE_RATE, np.int16))  # it runs, and the first run is paid
    except Exception as exc:  # missing, corrupt or unloadable: the call goes on without it
        log.warning("smart-turn unavailable, using the fixed silence rule: %s", exc)
        return None
    return BatchedTurnModel(model, **runner_options)  # type: ignore[arg-type]


__all__ = ["BatchedTurnModel", "SmartTurn", "TurnModel", "load_turn_model"]
