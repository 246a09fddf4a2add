"""SpeechOutput: the bot's speech between its playout queue and the transport's sink.

Place in the flow: the last step of every frame, the session takes the next frame from
`playout` and `write`s it to the sink, so output is clocked by input and the session knows
what the caller has heard. On a speech candidate it `hold`s (queued frames dropped from the
sink and rewound, nothing lost); a confirmed barge-in `cut`s, keeping the unplayed rest.
Both are synchronous: the sink is silenced in the event-loop turn that saw the speech.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voicebot.agent.playout import AudioSink, Playout, Utterance


@dataclass(eq=False)
class SpeechOutput:
    sink: AudioSink
    playout: Playout = field(default_factory=Playout, init=False)
    # The sentence the last frame written came from (None before the first): frames the
    # sink drops on a hold or a cut were its, so it is the one rewound.
    _last: Utterance | None = field(default=None, init=False)
    # None while output flows; while paused on a speech candidate, since when (call
    # seconds): set by `hold`, back to None on `release` (the candidate died) or `cut`.
    held_at: float | None = field(default=None, init=False)
    # Told how many frames the sink dropped unplayed (a recorder silences them).
    on_unheard: Callable[[int], None] | None = None

    def write(self, frame: np.ndarray, utterance: Utterance) -> None:
        self.sink.write(frame)
        self._last = utterance

    def hold(self, t: float) -> None:
        """Pause at `t`: what the sink still holds is dropped, and played again later."""
        self._take_back()
        self.held_at = t

    def release(self) -> None:
        """The candidate died as a blip: play on from where the hold paused."""
        self.held_at = None

    def cut(self, t: float) -> tuple[list[Utterance], float]:
        """Barge-in at `t`: silence now. Returns what was never heard (the playout is left
        empty) and when output stopped (the hold's start, if it was held)."""
        self._take_back()
        remainder = self.playout.take_remainder()
        stopped_at = self.held_at if self.held_at is not None else t
        self.held_at = None
        return remainder, stopped_at

    def _take_back(self) -> None:
        dropped = self.sink.clear()
        self.playout.rewind(dropped, self._last)
        if dropped and self.on_unheard is not None:
            self.on_unheard(dropped)


def heard_text(spoken: list[str], remainder: list[Utterance]) -> str:
    """What the caller heard of a reply cut off: its sentences that started playing, the
    last one (if cut inside) up to the share of its words its audio had reached."""
    if not spoken:
        return ""
    cut = remainder[0] if remainder and remainder[0].announced else None
    if cut is None or cut.text != spoken[-1]:
        return " ".join(spoken)
    words = cut.text.split()
    share = cut.position / max(1, len(cut.audio))
    return " ".join([*spoken[:-1], " ".join(words[: round(len(words) * share)])]).strip()
