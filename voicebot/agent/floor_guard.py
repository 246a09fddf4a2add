"""FloorGuard: background talk or noise must not hold the caller's floor for ever.

Place in the flow: after each frame's VAD events the session asks `on_frame` whether the
open segment should be cut. The VAD scores babble (background talkers, a TV) as speech, so
without this a segment can stay open for as long as the noise lasts (up to
`vad.max_speech_ms`, then again): no speech_end, no turn, the bot silent. Once a segment
has been voiced for `agent.max_wordless_segment_ms` (its pauses not counted), what it
holds goes to STT (off the loop, like any
transcription); if there are no words in it, it is cut: the session ends it like any
segment, its (empty) turn sends the bot back to waiting or lets a reply the noise cut off
resume, and the segmenter treats windows no louder than that background (its loud end +
`agent.noise_floor_margin_db`) as silence, so the same babble does not reopen it while a
caller speaking over it still gets through. When the background falls well below that
floor for a second, the floor is lifted. A segment with words is the caller's and is left
alone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np

from voicebot.agent.config import AgentConfig
from voicebot.agent.engine_calls import EngineCalls
from voicebot.audio.frames import block_dbfs
from voicebot.models.base import Transcript
from voicebot.models.vad import SpeechEnd, SpeechSegmenter
from voicebot.models.vad.segmenter import window_dbfs

log = logging.getLogger("voicebot.agent")

LOUD_PERCENTILE = 90  # the background's loud end: most of it stays under the floor
LIFT_BELOW_DB = 10.0  # the background has gone when it is this far under the floor...
LIFT_AFTER_MS = 1_500.0  # ...for this long
CHECK_SLACK_S = 1.0  # a wordless-segment check is needed this long after it is asked


@dataclass(eq=False)
class FloorGuard:
    config: AgentConfig
    segmenter: SpeechSegmenter
    engine_calls: EngineCalls
    # The wordless check of the open segment (keyed by its onset), once per segment.
    checked_onset: float | None = field(default=None, init=False)
    check: asyncio.Task[Transcript] | None = field(default=None, init=False)
    # The check found no words: cut that segment on the next frame.
    cut_due: float | None = field(default=None, init=False)
    _quiet_ms: float = field(default=0.0, init=False)

    @property
    def noise_floor_dbfs(self) -> float | None:
        return self.segmenter.level_floor_dbfs

    def on_frame(self, windows: list[np.ndarray], *, judge: bool) -> SpeechEnd | None:
        """The segment to end now as no turn (its SpeechEnd), if any. `judge`: the open
        segment is a caller's turn in the making (not speech the bot ignores)."""
        limit = self.config.max_wordless_segment_ms
        if limit <= 0:
            return None
        self._maybe_lift_floor(windows)
        segmenter = self.segmenter
        onset = segmenter.onset
        if onset is None:
            self._forget()
            return None
        if self.cut_due is not None and self.cut_due == onset:
            self.cut_due = None
            return self._cut()
        if judge and self.checked_onset != onset and segmenter.voiced_ms >= limit:
            audio = segmenter.audio_so_far()
            if audio is not None and len(audio):
                self._forget()
                self.checked_onset = onset
                # Nobody waits on this check: callers' turns go first on a busy STT.
                self.check = asyncio.create_task(
                    self.engine_calls.transcribe(audio, slack_s=CHECK_SLACK_S)
                )
                self.check.add_done_callback(lambda task, at=onset: self._checked(task, at))
        return None

    def stop(self) -> asyncio.Task[Transcript] | None:
        """The call ends: its check (cancelled) for the session to await."""
        task = self.check
        if task is not None:
            task.cancel()
        return task

    def _checked(self, task: asyncio.Task[Transcript], onset: float) -> None:
        if task is not self.check:
            return
        self.check = None
        if task.cancelled():
            return
        if task.exception() is not None:
            return  # STT failing is reported by the turn that hears this segment
        if not task.result().text.strip() and self.segmenter.onset == onset:
            self.cut_due = onset

    def _cut(self) -> SpeechEnd | None:
        audio = self.segmenter.audio_so_far()
        end = self.segmenter.cut()
        if end is None or audio is None:
            return end
        levels = block_dbfs(audio)  # per 20 ms: the unit the background's level is taken in
        if len(levels):
            loud_end = float(np.percentile(levels, LOUD_PERCENTILE))
            floor = loud_end + self.config.noise_floor_margin_db
            current = self.segmenter.level_floor_dbfs
            self.segmenter.level_floor_dbfs = floor if current is None else max(current, floor)
            self._quiet_ms = 0.0
            log.info(
                "call %s: %.1f s of speech-like sound without words cut; floor %.1f dBFS",
                self.engine_calls.call_id, end.duration, self.segmenter.level_floor_dbfs,
            )  # fmt: skip
        return end

    def _maybe_lift_floor(self, windows: list[np.ndarray]) -> None:
        floor = self.segmenter.level_floor_dbfs
        if floor is None or not windows:
            return
        for window in windows:
            if window_dbfs(window) < floor - LIFT_BELOW_DB:
                self._quiet_ms += len(window) * 1000 / self.segmenter.sample_rate
            else:
                self._quiet_ms = 0.0
        if self._quiet_ms >= LIFT_AFTER_MS:
            self.segmenter.level_floor_dbfs = None
            self._quiet_ms = 0.0

    def _forget(self) -> None:
        if self.check is not None:
            self.check.cancel()
            self.check = None
        self.checked_onset = None
        self.cut_due = None
