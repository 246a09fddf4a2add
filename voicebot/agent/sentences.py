"""Streaming sentence splitter: LLM text deltas in, speakable sentences out.

TTS is run per sentence so the first one plays while the model writes the rest. A sentence
ends at . ! ? (or ; : on a long clause) followed by whitespace, not inside numbers ("4.5"),
common abbreviations ("Dr.", "e.g.") or initials; overlong runs are cut at a comma or space.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no",
    "approx", "dept", "inc", "ltd", "co", "mt", "ave", "fig", "u.s", "a.m", "p.m",
}  # fmt: skip
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|[;:](?=\s)")


class SentenceSplitter:
    """`first_clause_words`: the reply's first piece may end at a comma once it has that many
    words, so the caller hears the bot start sooner (0 disables)."""

    def __init__(
        self, min_chars: int = 12, max_chars: int = 220, first_clause_words: int = 4
    ) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.first_clause_words = first_clause_words
        self._buffer = ""
        self._emitted = 0

    def push(self, text: str, ends_phrase: bool = False) -> list[str]:
        """Add text; return the sentences it completed. `ends_phrase`: the text is known to
        end where a sentence or clause does, so it is not held for the next piece."""
        self._buffer += text + (" " if ends_phrase else "")
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            sentence, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if sentence:
                out.append(sentence)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        """The rest of the text as a last sentence (end of the reply)."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []

    def _find_cut(self) -> int | None:
        buf = self._buffer
        for m in _END.finditer(buf):
            end = m.end()
            if m.group().startswith((";", ":")) and end < self.max_chars // 2:
                continue  # clause marks split only long sentences
            if len(buf[:end].strip()) < self.min_chars:
                continue
            if m.group().startswith(".") and self._is_abbreviation(buf, m.start()):
                continue
            return end
        if self._emitted == 0 and self.first_clause_words:
            comma = buf.find(", ")
            if comma > 0 and len(buf[:comma].split()) >= self.first_clause_words:
                return comma + 1
        if len(buf) > self.max_chars:
            window = buf[: self.max_chars]
            cut = max(window.rfind(", "), window.rfind(" "))
            return cut + 1 if cut > 0 else self.max_chars
        return None

    @staticmethod
    def _is_abbreviation(buf: str, dot: int) -> bool:
        word = re.search(r"([\w.]+)$", buf[:dot])
        if word is None:
            return False
        token = word.group(1)
        is_initial = len(token) == 1 and token.isalpha() and token.isupper()
        return token.lower() in _ABBREVIATIONS or is_initial
