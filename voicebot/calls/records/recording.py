"""Call recordings: a stereo WAV per call, the caller on the left, the bot on the right.

Place in the flow: a `CallRecording` is the session's audio tap (agent/audio_tap.py): each
tick it gets the caller's frame as the transport delivered it and the bot frame sent in the
same tick, so both channels share one timeline. Bot frames a hold or a barge-in dropped
before they played are silenced (the right channel is what the caller could hear), which is
why the last `KEEP_FRAMES` ticks stay in memory before they are written. Writing happens on
one shared thread (`RecordingFiles`): the media path only copies 1.3 KB a tick. The file's
header is rewritten with the real length when the call ends; a gateway killed mid-call
leaves a file whose data is still there (readers take the data chunk to the end).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from voicebot.audio.frames import FRAME_SAMPLES, SAMPLE_RATE
from voicebot.audio.wav import pcm16_header

log = logging.getLogger("voicebot.records")

KEEP_FRAMES = 100  # 2 s: more than any sink holds unplayed (WS client buffer, paced queue)
_WRITE_EVERY = 50  # frames handed to the writer thread at once (1 s)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def recording_name(call_id: str, started: datetime) -> str:
    """`YYYY/MM/DD/<call id>.wav` relative to the recordings directory; the id made safe
    for a file name (SIP Call-IDs may hold '@', '/', ...) with a hash against collisions."""
    safe = _UNSAFE.sub("_", call_id)[:80]
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:10]
    return f"{started:%Y/%m/%d}/{safe}-{digest}.wav"


class RecordingFiles:
    """The recordings directory and the one thread that writes every call's file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recordings")

    def open(self, call_id: str, started: datetime) -> CallRecording:
        return CallRecording(self, recording_name(call_id, started), call_id)

    def path(self, name: str) -> Path:
        """A recording's file, refusing names that would leave the directory."""
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"recording path outside {self.root}: {name!r}")
        return path

    def submit(self, fn, *args) -> Future[object]:  # type: ignore[no-untyped-def]
        return self._thread.submit(fn, *args)

    def delete(self, name: str) -> None:
        """Erase one recording (a record deleted, retention); missing files are fine."""
        path = self.path(name)
        path.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """Bytes the recordings take (for `/healthz` and the metric)."""
        total = 0
        if self.root.is_dir():
            for folder, _, files in os.walk(self.root):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.stat(os.path.join(folder, name)).st_size
        return total

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class CallRecording:
    """One call's recording (the session's CallAudioTap)."""

    def __init__(self, files: RecordingFiles, name: str, call_id: str) -> None:
        self.name = name
        self.call_id = call_id
        self._files = files
        self._path = files.path(name)
        # The last ticks not yet handed to the writer: caller frames, and bot frames (None:
        # silent, or dropped unplayed).
        self._callers: list[np.ndarray] = []
        self._bots: list[np.ndarray | None] = []
        self._file: BinaryIO | None = None
        self._bytes = 0
        self._failed = False
        self._frames = 0
        self._files.submit(self._create)

    # -- the tap (media path) ------------------------------------------------------------------
    def tick(self, caller: np.ndarray, bot: np.ndarray | None) -> None:
        # Only references (and a 640-byte copy of the caller's frame, whose buffer the
        # transport may reuse): the stereo interleaving is done on the writer thread.
        self._callers.append(caller.copy())
        self._bots.append(bot)
        self._frames += 1
        if len(self._callers) >= KEEP_FRAMES + _WRITE_EVERY:
            callers, bots = self._callers[:_WRITE_EVERY], self._bots[:_WRITE_EVERY]
            del self._callers[:_WRITE_EVERY], self._bots[:_WRITE_EVERY]
            self._files.submit(self._append, callers, bots)

    def unheard(self, frames: int) -> None:
        if frames > 0:
            kept = len(self._bots)
            self._bots[max(0, kept - frames) :] = [None] * min(frames, kept)

    @property
    def seconds(self) -> float:
        return self._frames * FRAME_SAMPLES / SAMPLE_RATE

    def finish(self) -> Future[object]:
        """Write the rest and the real header; the future gives (name, bytes) or None."""
        callers, bots = self._callers, self._bots
        self._callers, self._bots = [], []
        return self._files.submit(self._close, callers, bots)

    # -- the writer thread -----------------------------------------------------------------------
    def _create(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("wb")
            self._file.write(pcm16_header(2, SAMPLE_RATE, 0))
        except OSError as exc:
            self._fail(exc)

    def _append(self, callers: list[np.ndarray], bots: list[np.ndarray | None]) -> None:
        if self._file is None or not callers:
            return
        chunk = np.zeros((len(callers) * FRAME_SAMPLES, 2), np.int16)
        chunk[:, 0] = np.concatenate(callers)
        for k, bot in enumerate(bots):
            if bot is not None:
                chunk[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES, 1] = bot
        try:
            data = chunk.astype("<i2").tobytes()
            self._file.write(data)
            self._bytes += len(data)
        except OSError as exc:
            self._fail(exc)

    def _close(
        self, callers: list[np.ndarray], bots: list[np.ndarray | None]
    ) -> tuple[str, int] | None:
        self._append(callers, bots)
        if self._file is None:
            return None
        try:
            self._file.seek(0)
            self._file.write(pcm16_header(2, SAMPLE_RATE, self._bytes))
            self._file.close()
        except OSError as exc:
            self._fail(exc)
            return None
        self._file = None
        return self.name, self._bytes + 44

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            log.error("call %s: recording to %s failed: %s", self.call_id, self._path, exc)
        self._failed = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
