"""Short human utterances for the Whisper loop tests and bench/stt_bench.py: the six short
recordings of `tests.human_speech` and its digit string ("two nine three four zero"), the
words cut out of two of them at their pauses, and two digit strings spliced from the "five
five" recording.

Short clips are where Whisper's trimmed encoder window loops ("ten of clubs" -> "10 of clubs
10 of clubs 10 of clubs"), and callers say many of them (a digit, yes/no, a card). Every
transcript here is the recording's own: a cut is made at a pause (energy within a few dB of
the room noise for >= 50 ms, read off the signal) between words of the known transcript, so
each piece holds whole words of it; a splice joins such pieces, so its words are theirs in
order. Cut points are in seconds of the 16 kHz recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tests import human_speech

SR = 16_000


@dataclass(frozen=True)
class Utterance:
    """One clip and what was said in it."""

    key: str
    kind: str  # "short" or "read" (as human_speech's kinds)
    transcript: str
    samples: np.ndarray  # 16 kHz mono int16


def _by_key() -> dict[str, human_speech.Recording]:
    return {r.key: r for r in human_speech.RECORDINGS}


def _cut(pcm: np.ndarray, start: float, end: float | None) -> np.ndarray:
    return pcm[int(start * SR) : None if end is None else int(end * SR)].copy()


# (key, recording, start s, end s or None, words): the pauses of cards-005 are at 1.12-1.15 s
# and 2.14-2.18 s, the one of cards-004 at 0.73-0.81 s (20-25 dB under the words).
CUTS: tuple[tuple[str, str, float, float | None, str], ...] = (
    ("cards-005a", "cards-005", 0.0, 1.14, "eight of spades"),
    ("cards-005b", "cards-005", 1.14, 2.17, "four of clubs"),
    ("cards-005c", "cards-005", 2.17, None, "seven of hearts"),
    ("cards-004a", "cards-004", 0.0, 0.80, "five"),
    ("cards-004b", "cards-004", 0.80, None, "five"),
)


def short_utterances() -> list[Utterance]:
    """The short recordings, the cut-out words and the spliced digit strings."""
    recs = _by_key()
    out = [Utterance(r.key, "short", r.transcript, r.samples()) for r in recs.values()
           if r.kind == "short"]  # fmt: skip
    digits = human_speech.DIGITS
    out.append(Utterance(digits.key, "short", digits.transcript, digits.samples()))
    pieces: dict[str, np.ndarray] = {}
    for key, source, start, end, words in CUTS:
        pieces[key] = _cut(recs[source].samples(), start, end)
        out.append(Utterance(key, "short", words, pieces[key]))
    five_five = recs["cards-004"].samples()
    out.append(Utterance("five-x3", "short", "five five five",
                         np.concatenate([pieces["cards-004a"], five_five])))  # fmt: skip
    out.append(Utterance("five-x4", "short", "five five five five",
                         np.concatenate([five_five, five_five])))  # fmt: skip
    return out


def read_utterances() -> list[Utterance]:
    """The LibriVox sentences as they are."""
    return [Utterance(r.key, r.kind, r.transcript, r.samples())
            for r in human_speech.recordings("read")]  # fmt: skip


def available() -> bool:
    """True when set-up has fetched every recording these are made of."""
    return human_speech.available() and human_speech.DIGITS.member.cached().is_file()


def all_utterances() -> list[Utterance]:
    return short_utterances() + read_utterances()
