"""The bot's outgoing speech: a queue of synthesized sentences played one frame per tick.

The agent, not the transport, decides which frame goes out when, so it always knows what
the caller has heard: on barge-in the unplayed remainder is kept (and can be resumed after a
false interruption) and the frames a transport still held are rewound, not lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voicebot.audio.frames import FRAME_SAMPLES, silence


class AudioSink(Protocol):
    """Where a call's outgoing frames go: the transport's paced output queue."""

    def write(self, frame: np.ndarray) -> None:
        """Queue one canonical frame (16 kHz int16, 320 samples) for playout."""
        ...

    def clear(self) -> int:
        """Drop everything queued and not yet played, at once; return frames dropped."""
        ...


@dataclass(eq=False)
class Utterance:
    """One synthesized sentence and how far it has been played."""

    text: str
    audio: np.ndarray = field(repr=False)
    position: int = 0  # samples already handed to the sink
    announced: bool = False  # bot_text published

    @property
    def remaining(self) -> int:
        return len(self.audio) - self.position


class Playout:
    def __init__(self) -> None:
        self._queue: deque[Utterance] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def empty(self) -> bool:
        return not self._queue

    @property
    def queued_samples(self) -> int:
        """Audio queued and not yet handed to the sink: how long until a sentence appended
        now starts playing."""
        return sum(max(0, u.remaining) for u in self._queue)

    def append(self, utterance: Utterance) -> None:
        self._queue.append(utterance)

    def next_frame(self) -> tuple[np.ndarray, Utterance] | None:
        """The next frame to send (zero-padded at a sentence end) and the sentence it is from."""
        while self._queue and self._queue[0].remaining <= 0:
            self._queue.popleft()
        if not self._queue:
            return None
        utt = self._queue[0]
        chunk = utt.audio[utt.position : utt.position + FRAME_SAMPLES]
        utt.position += len(chunk)
        if len(chunk) < FRAME_SAMPLES:
            chunk = np.concatenate([chunk, silence(FRAME_SAMPLES - len(chunk))])
        if utt.remaining <= 0:
            self._queue.popleft()
        return chunk, utt

    def rewind(self, frames: int, last: Utterance | None) -> None:
        """Frames the sink dropped were never heard: move `last`'s position back over them."""
        if frames <= 0 or last is None:
            return
        last.position = max(0, last.position - frames * FRAME_SAMPLES)
        if last.remaining > 0 and (not self._queue or self._queue[0] is not last):
            self._queue.appendleft(last)

    def take_remainder(self) -> list[Utterance]:
        """Everything not yet played, in order; the queue is left empty."""
        rest = [u for u in self._queue if u.remaining > 0]
        self._queue.clear()
        return rest
