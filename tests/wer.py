"""Word error rate of an STT transcript against what was said, for tests/test_stt_human.py
and bench/stt_bench.py.

Whisper writes "10 of clubs", "5-5", "Mr. John Dashwood", "ill-disposed"; the references
(tests/human_speech) say "ten of clubs", "five five", "mister john dashwood", "ill
disposed", and "29340" for "two nine three four zero". `normalise` maps both to the same
words first: lower case, punctuation and hyphens off, numbers spelled out (five digits or
more, or a leading 0, digit by digit), the few titles Whisper abbreviates written in full.
A loop that says a word more often than the speaker did (`excess_repeat`) is told apart
from a misheard word by the reference, not by the engine's own loop detector.
"""

from __future__ import annotations

import re

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def number_words(n: int) -> list[str]:
    """A whole number 0 <= n < 10**9 in words ("one hundred and five" without the "and")."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = number_words(n % size) if n % size else []
            return [*number_words(n // size), name, *rest]
    raise ValueError(n)  # pragma: no cover


def _spell_numbers(text: str) -> str:
    def spell(m: re.Match[str]) -> str:
        whole, frac = m.group(1), m.group(2)
        if "," in whole:  # "1,500": grouped, so said as a number
            words = number_words(int(whole.replace(",", "")))
        elif len(whole) >= 5 or (len(whole) > 1 and whole[0] == "0"):
            # "29340", "0794": a digit string (phone, account, code), said digit by digit
            words = [_ONES[int(d)] for d in whole]
        else:
            words = number_words(int(whole))
        if frac:
            words += ["point", *(_ONES[int(d)] for d in frac)]
        return " " + " ".join(words) + " "

    # "5,5" (digits read one by one) is two numbers, "1,500" one.
    return re.sub(r"(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(\d+))?", spell, text)


def normalise(text: str) -> list[str]:
    """The words of `text` as a reference spells them."""
    text = _spell_numbers(text.lower())
    words = re.findall(r"[a-z']+", text.replace("-", " "))
    return [_TITLES.get(w, w) for w in (w.strip("'") for w in words) if w]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) after normalising both."""
    ref = normalise(reference)
    return edit_distance(ref, normalise(hypothesis)), len(ref)


def wer(reference: str, hypothesis: str) -> float:
    errors, words = word_errors(reference, hypothesis)
    return errors / max(1, words)


def _max_copies(words: list[str], phrase: tuple[str, ...]) -> int:
    k, best = len(phrase), 0
    for start in range(len(words)):
        copies = 0
        while tuple(words[start + copies * k : start + (copies + 1) * k]) == phrase:
            copies += 1
        best = max(best, copies)
    return best


def excess_repeat(reference: str, hypothesis: str) -> str | None:
    """A phrase the hypothesis says back to back more often than the reference does (a
    decoding loop, judged against what was said), None if there is none."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    for k in range(1, len(hyp) // 2 + 1):
        for start in range(len(hyp) - 2 * k + 1):
            phrase = tuple(hyp[start : start + k])
            if tuple(hyp[start + k : start + 2 * k]) != phrase:
                continue
            if _max_copies(hyp, phrase) > max(1, _max_copies(ref, phrase)):
                return " ".join(phrase)
    return None
