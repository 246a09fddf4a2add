"""PacedFrames, the input clock of the WebSocket, WebRTC and media-stream legs: one frame per
20 ms whatever the peer sends, and a backlog left by a late burst drained in the caller's next
pause instead of kept as latency for the rest of the call (never a word dropped).

The peers here push in lockstep with the clock (a frame pushed after each frame taken), so
what stays queued does not depend on how fast this machine runs the ticks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container

import numpy as np

from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.calls.pacing import PAUSE_BEFORE_DROP_FRAMES, STANDING_WINDOW_TICKS, PacedFrames


class Count:
    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


def frame(ident: int, level: int = 3000) -> np.ndarray:
    """A frame that says which it is: its first sample is its number, the rest its level."""
    out = np.full(FRAME_SAMPLES, level, np.int16)
    out[0] = ident
    return out


def run(paced: PacedFrames, ticks: int, each_tick: Callable[[int], None]) -> list[int]:
    """The first sample of each frame taken over `ticks` ticks; `each_tick(i)` after each."""

    async def main() -> list[int]:
        seen: list[int] = []
        async for got in paced:
            seen.append(int(got[0]))
            each_tick(len(seen))
            if len(seen) == ticks:
                break
        return seen

    return asyncio.run(main())


def lockstep_peer(
    paced: PacedFrames, quiet: Container[int] = frozenset(), pause_level: int = 20
) -> Callable[[int], None]:
    """After each frame taken, push the next: numbered 100, 101, ...; `quiet` ones at
    `pause_level` (the rest are speech)."""
    ident = iter(range(100, 100_000))

    def push(_: int) -> None:
        n = next(ident)
        paced.push(frame(n, level=pause_level if n in quiet else 3000))

    return push


def backlog(paced: PacedFrames, frames: int = 8) -> None:
    """The peer stalled, then sent the speech it held."""
    for i in range(1, frames + 1):
        paced.push(frame(i))


def in_order(seen: list[int]) -> bool:
    return seen == sorted(seen) and len(set(seen)) == len(seen)


def test_a_backlog_is_drained_in_the_callers_next_pause() -> None:
    dropped = Count()
    paced = PacedFrames(dropped=dropped)
    backlog(paced)
    # Speech for two seconds, then a pause; the backlog stands through the speech.
    pause = set(range(200, 400))
    seen = run(paced, 3 * STANDING_WINDOW_TICKS, lockstep_peer(paced, quiet=pause))
    speech = [n for n in range(1, 9)] + [n for n in range(100, 200)]
    assert [n for n in seen if n not in pause][: len(speech)] == speech  # every word heard
    assert in_order(seen)
    # Each speech frame was taken 8 ticks after it was pushed ...
    assert seen.index(199) == 199 - 100 + 8
    # ... the 7 frames owed went 300 ms into the pause, the oldest of it first ...
    assert dropped.value == 7
    gone = set(range(seen[seen.index(199) + 1], seen[-1])) - set(seen)
    first_paused = 200 + PAUSE_BEFORE_DROP_FRAMES
    assert gone == set(range(first_paused, first_paused + 7))
    # ... and from then on each frame is taken the tick after it was pushed.
    assert seen[-1] == 100 + len(seen) - 2


def test_a_backlog_through_speech_loses_no_frame() -> None:
    dropped = Count()
    paced = PacedFrames(dropped=dropped)
    backlog(paced)
    # Words with 200 ms gaps between them (a phrase's, not a pause's) for three seconds.
    gaps = {n for n in range(100, 400) if (n - 100) % 30 >= 20}
    seen = run(paced, 3 * STANDING_WINDOW_TICKS, lockstep_peer(paced, quiet=gaps))
    assert dropped.value == 0
    assert seen == list(range(1, 9)) + list(range(100, 100 + len(seen) - 8))


def test_a_pause_is_found_over_the_lines_own_noise() -> None:
    # A line with background noise at -45 dBFS: the pause is quiet for this line.
    dropped = Count()
    paced = PacedFrames(dropped=dropped)
    backlog(paced)
    pause = set(range(160, 400))
    seen = run(paced, 3 * STANDING_WINDOW_TICKS, lockstep_peer(paced, pause, pause_level=180))
    assert dropped.value == 7
    assert in_order(seen) and set(range(100, 160)) <= set(seen)


def test_a_peer_that_sends_in_chunks_loses_nothing() -> None:
    # 100 ms at a time, every 100 ms: the queue swings 5 -> 1 frames but never stands.
    dropped = Count()
    paced = PacedFrames(dropped=dropped)
    ident = iter(range(1, 10_000))
    chunk = 5

    def push_chunk() -> None:
        for _ in range(chunk):
            paced.push(frame(next(ident)))

    push_chunk()
    seen = run(paced, 2 * STANDING_WINDOW_TICKS, lambda n: push_chunk() if n % chunk == 0 else None)
    assert dropped.value == 0
    assert seen == list(range(1, len(seen) + 1))


def test_a_peer_in_step_with_the_clock_is_never_touched() -> None:
    dropped, underruns = Count(), Count()
    paced = PacedFrames(dropped=dropped, underruns=underruns)
    paced.push(frame(99))
    seen = run(paced, 2 * STANDING_WINDOW_TICKS, lockstep_peer(paced))
    assert seen == list(range(99, 99 + len(seen)))
    assert dropped.value == 0 and underruns.value == 0
