"""What a small model's reply may be on a phone line: at most N sentences, no loops.

Place in the flow: between an LLM's token stream and the agent (`shape_reply` wraps any
`LanguageModel.stream`). Small models drift into "I'm not. I'm not. I'm not. ..." or
"5 5 5 5 5" and ramble for 96 tokens; a caller hears every word of it. Text is let through
a whole sentence at a time (the first sentence's opening clause may go ahead) so a
sentence that repeats an earlier one can be dropped before it is heard; the stream is
closed (generation stops) as soon as the reply is complete, which also saves the CPU the
rest would have cost. The agent splits sentences again for TTS; that is unaffected (it gets
the same text, each piece marked as ending a sentence or clause).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from voicebot.models.base import LlmOutput, TextDelta

# A sentence ends at . ! ? followed by whitespace; not after a digit-dot-digit, a one-letter
# initial or the abbreviations a spoken reply uses ("a.m.", "Dr.").
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)")
_ABBREVIATIONS = ("a.m", "p.m", "dr", "mr", "mrs", "ms", "st", "e.g", "i.e", "etc", "no", "vs")
_WORD = re.compile(r"[a-z0-9']+")


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _is_abbreviation(text: str, dot: int) -> bool:
    word = text[:dot].rsplit(None, 1)[-1].lower() if text[:dot].strip() else ""
    word = word.lstrip("(\"'")
    return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS


def split_sentence(text: str) -> tuple[str, str] | None:
    """(first complete sentence, rest) of `text`, or None if no sentence has ended yet."""
    for m in _END.finditer(text):
        if m.group().startswith(".") and _is_abbreviation(text, m.start()):
            continue
        return text[: m.end()].strip(), text[m.end() :].lstrip()
    return None


def repeated_run(text: str, times: int = 3, max_n: int = 4) -> int | None:
    """Where a loop starts inside one sentence: the character offset of the second copy of
    a run of 1..`max_n` words said `times` times in a row ("5 5 5", "very very very",
    "of clubs of clubs of clubs"); None if there is none."""
    spans = [(m.start(), m.group()) for m in _WORD.finditer(text.lower())]
    words = [w for _, w in spans]
    for n in range(1, max_n + 1):
        for i in range(len(words) - n * times + 1):
            gram = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == gram for k in range(1, times)):
                return spans[i + n][0]
    return None


FIRST_CLAUSE_WORDS = 4  # the first sentence's opening clause goes ahead from this many words


class ReplyShaper:
    """Feed an LLM's text; take back what may be spoken. `done` once no more is wanted.

    The reply's first sentence may go out in two pieces: its opening clause, once a comma
    follows `first_clause_words` words, and the rest when the sentence ends. The caller
    hears the bot start while the model writes the rest (the agent's TTS splits at that
    comma too); the first sentence has no earlier one to repeat, so nothing is lost by
    letting it out early but the loop check across the comma."""

    def __init__(self, max_sentences: int = 2, first_clause_words: int = FIRST_CLAUSE_WORDS):
        self.max_sentences = max_sentences  # 0: no limit
        self.first_clause_words = first_clause_words  # 0: whole sentences only
        self.sentences: list[str] = []
        self.done = False
        self.loop_cut = False  # a repetition was cut out
        self._pending = ""
        self._clause = ""  # the first sentence's opening clause, said before its end

    def push(self, text: str) -> list[str]:
        """Add model text; return the pieces now ready to speak."""
        if self.done:
            return []
        self._pending += text
        out: list[str] = []
        while not self.done:
            split = split_sentence(self._pending)
            candidate = split[0] if split else self._pending
            loop_at = repeated_run(candidate)
            if loop_at is not None:
                out += self._accept(candidate[:loop_at].rstrip(" ,;"))
                self.loop_cut = self.done = True
                break
            if split is None:
                out += self._opening_clause()
                break
            sentence, self._pending = split
            out += self._accept(sentence)
        return out

    def flush(self) -> list[str]:
        """The model stopped: what is left, if it may be said."""
        if self.done:
            return []
        rest, self._pending = self._pending.strip(), ""
        loop_at = repeated_run(rest)
        if loop_at is not None:
            rest, self.loop_cut = rest[:loop_at].rstrip(" ,;"), True
        out = self._accept(rest) if rest or self._clause else []
        self.done = True
        return out

    def text(self) -> str:
        return " ".join(self.sentences)

    def _opening_clause(self) -> list[str]:
        if self.sentences or self._clause or not self.first_clause_words:
            return []
        for m in re.finditer(r",(?=\s)", self._pending):
            clause = self._pending[: m.end()].strip()
            if len(clause.split()) >= self.first_clause_words:
                self._clause, self._pending = clause, self._pending[m.end() :].lstrip()
                return [clause]
        return []

    def _accept(self, sentence: str) -> list[str]:
        if self._clause:  # the rest of the first sentence: one sentence with its clause
            self.sentences.append(f"{self._clause} {sentence}".strip())
            self._clause = ""
            self._count()
            return [sentence] if _normalise(sentence) else []
        key = _normalise(sentence)
        if not key:
            return []
        if any(key == _normalise(s) for s in self.sentences):
            self.loop_cut = self.done = True  # the model started over: a loop
            return []
        self.sentences.append(sentence)
        self._count()
        return [sentence]

    def _count(self) -> None:
        if self.max_sentences and len(self.sentences) >= self.max_sentences:
            self.done = True


async def shape_reply(
    stream: AsyncIterator[LlmOutput], max_sentences: int = 2
) -> AsyncIterator[LlmOutput]:
    """`stream` as sentences, at most `max_sentences`, loops cut; generation is stopped
    (the stream closed) as soon as the reply is complete. Call actions pass through. Each
    piece given out is marked `TextDelta.ends_phrase` (it ends where a sentence or clause
    does); a piece of `stream` so marked (a shaped reply's: a front desk shapes what the
    llama engine shaped) ends its sentence or clause at once: read as raw text it would be
    held until the next piece's whitespace, a whole sentence later."""
    shaper = ReplyShaper(max_sentences)
    first = True

    def pieces(ready: list[str]) -> list[TextDelta]:
        nonlocal first
        out = [
            TextDelta(t if first and i == 0 else " " + t, ends_phrase=True)
            for i, t in enumerate(ready)
        ]
        first = first and not ready
        return out

    try:
        async for piece in stream:
            if not isinstance(piece, TextDelta):
                yield piece
                continue
            for out in pieces(shaper.push(piece.text + (" " if piece.ends_phrase else ""))):
                yield out
            if shaper.done:
                return
        for out in pieces(shaper.flush()):
            yield out
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
