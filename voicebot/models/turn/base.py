"""The turn-model seam: what the agent asks at a caller's pause.

Place in the flow: after a short silence in the caller's speech the agent's endpointer
asks a `TurnModel` how likely it is that the caller has finished, given the turn's audio so
far; likely ends the turn at once, unlikely lets the pause run longer. Implementations:
`runner.BatchedTurnModel` over `smart_turn.SmartTurn` (batched across calls, off the event
loop); tests plug in their own.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class TurnModel(Protocol):
    name: str

    async def probability(self, audio: np.ndarray) -> float:
        """P(the caller's turn is complete) from its audio so far: 16 kHz mono int16 from
        the turn's onset (with prefix padding) up to now, the pause so far included."""
        ...
