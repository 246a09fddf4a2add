"""CallAudioTap: what a call sounded like on both sides, tick by tick, for a recorder.

Place in the flow: at the end of each frame step the session hands the tap the caller's
frame as it came from the transport and the bot frame that went out in the same tick (None:
silence), so both share one timeline. When a hold or a barge-in makes the sink drop frames it
had been given but not yet played, `unheard` says how many of the last bot frames the caller
never heard. The tap must only copy and enqueue: it runs on the media path.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class CallAudioTap(Protocol):
    def tick(self, caller: np.ndarray, bot: np.ndarray | None) -> None:
        """One 20 ms tick: the caller's frame and the bot's (None when the bot was silent)."""
        ...

    def unheard(self, frames: int) -> None:
        """The last `frames` bot frames given to `tick` were dropped before playing."""
        ...
