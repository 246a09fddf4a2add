"""Endpointer: when a caller's turn ends — after a fixed silence, or when a turn model says so.

Place in the flow: after each frame's VAD events the session asks `on_frame` whether the
open speech segment ends now. With `agent.endpointing = "fixed"` (or no turn model) the
segmenter's own `vad.min_silence_ms` rule ends it and this does nothing. With "smart_turn"
the segmenter waits up to `turn_max_silence_ms` (see `segmenter_params`) and this decides:
once the caller has paused `turn_min_silence_ms`, the turn's audio so far goes to the turn
model (batched across calls, off the event loop); judged complete (P >= `turn_threshold`)
the segment ends at that pause, judged unfinished it runs on, and speech resuming within
`turn_max_silence_ms` continues the same turn. If the model fails, this call goes back to
the fixed rule. It only ever ends a caller's segment: barge-in (speech_start) never waits
for it.

One verdict per pause, with a high bar (default 0.9: at real ends the model is near-certain,
P ~0.98, while "probably complete", 0.5-0.9, is mostly a caller in mid-sentence). Measured
and not kept (bench/endpointing_bench.py): asking again later in a long pause, or lowering
the bar as the pause grows, cuts more callers off than it saves waits, because the model's P
rises with the trailing silence on mid-sentence pauses as much as on finished turns; a wait
that depends on the first P does the same. The price of the bar is the tail: a finished turn
the model misjudges waits `turn_max_silence_ms`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from voicebot.agent.clock import EngineClock
from voicebot.agent.config import AgentConfig
from voicebot.models.turn import TurnModel
from voicebot.models.vad import SpeechEnd, SpeechSegmenter, VadParams

log = logging.getLogger("voicebot.agent")

ErrorReport = Callable[[str, BaseException], None]  # EngineCalls.error


def uses_turn_model(config: AgentConfig, model: TurnModel | None) -> bool:
    return config.endpointing == "smart_turn" and model is not None


def segmenter_params(config: AgentConfig, vad: VadParams, model: TurnModel | None) -> VadParams:
    """The segmenter's rule for this call: the fixed silence, or with a turn model, the
    longest wait (the endpointer ends segments earlier)."""
    if not uses_turn_model(config, model):
        return vad
    return dataclasses.replace(
        vad, min_silence_ms=max(vad.min_silence_ms, config.turn_max_silence_ms)
    )


@dataclass(eq=False)
class Endpointer:
    config: AgentConfig
    segmenter: SpeechSegmenter
    model: TurnModel | None
    clock: EngineClock
    fixed_silence_ms: int  # vad.min_silence_ms: the rule when the model is off or failed
    report: ErrorReport
    # The model's verdict on the current pause (keyed by where it began), asked once per
    # pause; None outside a pause.
    pause: float | None = field(default=None, init=False)
    verdict: asyncio.Task[float] | None = field(default=None, init=False)
    # The model failed on this call: the fixed rule from then on.
    failed: bool = field(default=False, init=False)

    def on_frame(self, *, judge: bool) -> SpeechEnd | None:
        """The speech_end to act on now, if the endpointer ends the open segment here.

        `judge` False (a segment the bot talks through), or a failed model: the fixed rule
        (the segmenter itself would wait `turn_max_silence_ms`)."""
        if not uses_turn_model(self.config, self.model):
            return None  # the segmenter's own min_silence_ms rule is the fixed rule
        segmenter = self.segmenter
        if self.failed:
            judge = False
        pause = segmenter.pause_start
        if pause != self.pause:
            self._drop()  # speech resumed, or the segment ended: that verdict is moot
            self.pause = pause
        if pause is None:
            return None
        silence_ms = segmenter.trailing_silence_ms
        if not judge:
            return segmenter.end_at_pause() if silence_ms >= self.fixed_silence_ms else None
        if self.verdict is None:
            if silence_ms < self.config.turn_min_silence_ms:
                return None
            audio = segmenter.audio_so_far()
            assert self.model is not None and audio is not None
            self.verdict = asyncio.ensure_future(self.clock.call(self.model.probability(audio)))
            return None
        if not self.verdict.done():
            return None
        try:
            probability = self.verdict.result()
        except Exception as exc:  # any model fault: this call goes on without it
            self.failed = True
            self.report(f"turn model {getattr(self.model, 'name', '')}".strip(), exc)
            return segmenter.end_at_pause() if silence_ms >= self.fixed_silence_ms else None
        if probability >= self.config.turn_threshold:
            return segmenter.end_at_pause()
        return None  # unfinished: the segmenter's longest wait ends it if nobody speaks

    def _drop(self) -> None:
        if self.verdict is not None and not self.verdict.done():
            self.verdict.cancel()
        self.verdict = None

    def stop(self) -> asyncio.Task[float] | None:
        """The call ends: cancel a verdict in progress; returns it for the session to await."""
        task, self.verdict = self.verdict, None
        if task is not None:
            task.cancel()
        return task
