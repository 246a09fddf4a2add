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

A pause the model judges unfinished may still end early on the words: with a text model
(`models.turn.text`) and `turn_text_threshold` > 0, the early transcript speculation made of
the speech before this pause is asked whether its sentence is over; P >= that bar ends the
turn once the pause reaches `turn_text_min_silence_ms`. The audio model misjudges flat or
read-aloud finished turns ("I'd like to book a table for two."); the words do not.

The verdict is asked for ahead of the pause it is about, so that it is ready when the pause
reaches `turn_min_silence_ms` instead of a model run later: at that point (`decide_at_ms`,
in whole VAD windows) minus 1.25 times the time verdicts have been taking on this call, with
the pause's own audio (line noise) repeated to the length it will have then. The model
hears what it would have heard at `turn_min_silence_ms` unless the caller speaks in the
meantime, and then the pause, and its verdict, are dropped as before (a verdict that failed
meanwhile is still reported, and the call goes back to the fixed rule).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voicebot.agent.clock import EngineClock
from voicebot.agent.config import AgentConfig
from voicebot.models.turn import TurnModel
from voicebot.models.turn.text import TextTurnModel
from voicebot.models.vad import SpeechEnd, SpeechSegmenter, VadParams

log = logging.getLogger("voicebot.agent")

# Verdict time before the call has measured one: the model's run on this kind of machine
# (~60 ms) plus the thread hop.
FIRST_VERDICT_GUESS_S = 0.08
# At least this much real pause before asking: the audio repeated to stand for the rest
# of the pause is the pause's own, so there must be some.
MIN_REAL_PAUSE_MS = 64.0

ErrorReport = Callable[[str, BaseException], None]  # EngineCalls.error
# The early transcript of the speech that ends at a pause's start, once it is in (None:
# not yet, or none made): Speculator.early_text.
EarlyText = Callable[[float], str | None]


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
    # How long verdicts take on this call (engine queue included), smoothed: how far ahead
    # of turn_min_silence_ms the model is asked.
    verdict_s: float = field(default=FIRST_VERDICT_GUESS_S, init=False)
    # The second opinion from the words, for pauses the audio model judges unfinished.
    text_model: TextTurnModel | None = None
    early_text: EarlyText = lambda _pause: None
    text_verdict: asyncio.Task[float] | None = field(default=None, init=False)
    # The last segment end this endpointer decided, and on what ("turn_model", "transcript").
    ended: SpeechEnd | None = field(default=None, init=False)
    ended_on: str = field(default="turn_model", init=False)

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
            if silence_ms < self.ask_at_ms():
                return None
            audio = segmenter.audio_so_far()
            assert audio is not None
            padded = pause_padded(audio, silence_ms, self.decide_at_ms(), segmenter.sample_rate)
            self.verdict = asyncio.ensure_future(self.clock.call(self._timed(padded)))
            return None
        if not self.verdict.done() or silence_ms < self.config.turn_min_silence_ms:
            return None
        try:
            probability = self.verdict.result()
        except Exception as exc:  # any model fault: this call goes on without it
            self._model_failed(exc)
            return segmenter.end_at_pause() if silence_ms >= self.fixed_silence_ms else None
        if probability >= self.config.turn_threshold:
            return self._end("turn_model")
        return self._by_words(pause, silence_ms)

    def _by_words(self, pause: float, silence_ms: float) -> SpeechEnd | None:
        """Judged unfinished: the end from the early transcript's words, if they say so;
        else the segmenter's longest wait ends it if nobody speaks."""
        if self.text_model is None or self.config.turn_text_threshold <= 0:
            return None
        if self.text_verdict is None:
            text = self.early_text(pause)
            if text:
                work = self.text_model.end_probability(text)
                self.text_verdict = asyncio.ensure_future(self.clock.call(work))
            return None
        if not self.text_verdict.done() or silence_ms < self.config.turn_text_min_silence_ms:
            return None
        try:
            probability = self.text_verdict.result()
        except Exception as exc:  # any model fault: the audio model alone from then on
            self._text_model_failed(exc)
            return None
        if probability >= self.config.turn_text_threshold:
            return self._end("transcript")
        return None

    def _end(self, on: str) -> SpeechEnd | None:
        self.ended, self.ended_on = self.segmenter.end_at_pause(), on
        return self.ended

    def cause(self, end: SpeechEnd) -> tuple[str, float | None]:
        """What ended the segment `end` (for its speech_end event), with the model's P at its
        last pause if it was asked: the verdict of the pause the segment ended in is still
        held when the segmenter's own rule ends it."""
        verdict = self.verdict
        probability = None
        held = verdict is not None and verdict.done() and not verdict.cancelled()
        if held and verdict.exception() is None:
            probability = verdict.result()
        if end is self.ended:
            return self.ended_on, probability
        if probability is not None:
            return "longest_wait", probability
        return "silence", None

    def decide_at_ms(self) -> float:
        """The pause, in whole VAD windows, at which a verdict may end the turn: the first
        window count reaching `turn_min_silence_ms`."""
        window_ms = 1000.0 * self.segmenter.window_samples / self.segmenter.sample_rate
        return window_ms * -(-self.config.turn_min_silence_ms // window_ms)

    def ask_at_ms(self) -> float:
        """The pause at which to ask, so that the verdict is back by `decide_at_ms`."""
        lead_ms = 1000.0 * self.verdict_s * 1.25
        floor = min(MIN_REAL_PAUSE_MS, self.decide_at_ms())
        return max(floor, self.decide_at_ms() - lead_ms)

    async def _timed(self, audio: np.ndarray) -> float:
        assert self.model is not None
        began = time.perf_counter()
        probability = await self.model.probability(audio)
        took = time.perf_counter() - began
        self.verdict_s = 0.6 * self.verdict_s + 0.4 * took
        return probability

    def _drop(self) -> None:
        for task in (self.verdict, self.text_verdict):
            if task is not None and not task.done():
                task.cancel()
        # A verdict that failed before it was needed still counts as the model failing.
        if (exc := _failure(self.verdict)) is not None and not self.failed:
            self._model_failed(exc)
        if (exc := _failure(self.text_verdict)) is not None and self.text_model is not None:
            self._text_model_failed(exc)
        self.verdict = self.text_verdict = None

    def _model_failed(self, exc: BaseException) -> None:
        """The turn model failed: reported, and the fixed rule for the rest of the call."""
        self.failed = True
        self.report(f"turn model {getattr(self.model, 'name', '')}".strip(), exc)

    def _text_model_failed(self, exc: BaseException) -> None:
        """The text model failed: reported, and the audio model alone from then on."""
        self.report(f"text turn model {getattr(self.text_model, 'name', '')}".strip(), exc)
        self.text_model = None

    def stop(self) -> list[asyncio.Task[float]]:
        """The call ends: cancel the verdicts in progress; returns them for the session to
        await."""
        tasks = [t for t in (self.verdict, self.text_verdict) if t is not None]
        self.verdict = self.text_verdict = None
        for task in tasks:
            task.cancel()
        return tasks


def _failure(task: asyncio.Task[float] | None) -> BaseException | None:
    """The exception a finished verdict raised (retrieved, so asyncio does not log it)."""
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()


def pause_padded(
    audio: np.ndarray, pause_ms: float, target_ms: float, sample_rate: int
) -> np.ndarray:
    """`audio`, whose last `pause_ms` are a pause, with that pause's audio repeated until the
    pause is `target_ms` long: what the turn model would get at `target_ms` if the line
    stays quiet. (The pause's start may still hold the last word's fading tail, repeated
    with it: repeating only its later half is untried.)"""
    missing = round((target_ms - pause_ms) * sample_rate / 1000)
    pause = audio[len(audio) - round(pause_ms * sample_rate / 1000) :]
    if missing <= 0 or len(pause) == 0:
        return audio
    return np.concatenate([audio, np.resize(pause, missing)])
