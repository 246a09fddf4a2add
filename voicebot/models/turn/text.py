"""A second opinion on end of turn from the words: has the caller's sentence ended?

Place in the flow: when the audio turn model (Smart Turn) judges a pause unfinished, the
agent's endpointer may ask a `TextTurnModel` about the early transcript speculation already
made of the speech before that pause. Smart Turn hears prosody; it misjudges finished turns
said flatly or read aloud (P <= 0.2 on "I'd like to book a table for two.", on sentences read
mid-paragraph: bench/endpointing_bench.py), and each such turn waits the longest pause.
The words often settle it: "are you open on sunday" is over, "my name is" is not.

`LlamaTextTurn` asks the embedded SmolLM2-135M-Instruct (the same GGUF file as the LLM,
mmapped once): the caller's words, lowercased and without punctuation (Whisper punctuates
fragments as sentences), as a chat user message, and the probability that the model's next
token closes it: end of message, or a full stop, question or exclamation mark. The idea is
LiveKit's turn detector (an LM's P(end of utterance) over the transcript); their model is
fine-tuned for it, this one is not, so the agent uses it only to shorten waits the audio
model would make long, with a bar set from the endpointing bench. One small llama.cpp
context (one thread, no thread pool to spin) on its own worker at the engines' priority.

Words that end in a number are never called finished (P 0): a phone number, a card number
or a code can always go on, and that is where callers pause mid-turn ("my number is 45 |
72"). The endpointing bench measured the difference: with numbers scored like any words,
the rule cut callers off on 54 of 112 mid-sentence pauses (over half the fixed rule's 97),
without them on 46, the audio model alone on 43.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicebot.models.executor import model_worker, run_blocking

log = logging.getLogger("voicebot.models")

MAX_WORDS = 32  # the end of a long turn is what matters; bounds the cost
CONTEXT_TOKENS = 128  # MAX_WORDS words in SmolLM2's tokens, with room to spare
END_PIECES = (".", "?", "!")  # next tokens that close the caller's sentence (with EOS)


class TextTurnModel(Protocol):
    name: str

    async def end_probability(self, text: str) -> float:
        """P(the caller's sentence is over) from what they said so far."""
        ...


def caller_words(text: str) -> list[str]:
    """The words of a transcript as the model reads them: lowercase, no punctuation, the
    last `MAX_WORDS`."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()[-MAX_WORDS:]


def ends_in_a_number(words: list[str]) -> bool:
    """The last word has a digit in it (Whisper writes spoken digits as digits)."""
    return bool(words) and any(c.isdigit() for c in words[-1])


class LlamaTextTurn:
    """`TextTurnModel` over SmolLM2 in llama.cpp (see the module docstring)."""

    def __init__(self, model_path: Path | None = None) -> None:
        from llama_cpp import Llama

        from voicebot.models.llm.llama_amx import avoid_amx_repack
        from voicebot.models.weights import SMOLLM2_GGUF

        avoid_amx_repack()
        path = model_path or SMOLLM2_GGUF.verified_path()
        self.name = f"text-turn-{Path(path).stem}"
        self._worker = model_worker("turn-text")
        self._llm: Any = self._worker.submit(
            Llama, model_path=str(path), n_ctx=CONTEXT_TOKENS, n_batch=CONTEXT_TOKENS,
            n_threads=1, n_threads_batch=1, logits_all=True, verbose=False, seed=0,
        ).result()  # fmt: skip
        self._prefix = self._tokens("<|im_start|>user\n")
        self._end_ids = sorted(
            {self._llm.token_eos(), *(self._tokens(piece)[0] for piece in END_PIECES)}
        )

    def _tokens(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode(), add_bos=False, special=True))

    def end_probability_sync(self, text: str) -> float:
        words = caller_words(text)
        if not words or ends_in_a_number(words):
            return 0.0
        said = self._tokens(" ".join(words))
        # Too long for the context: the words' end is what the verdict is about.
        tokens = self._prefix + said[max(0, len(said) - (CONTEXT_TOKENS - 1 - len(self._prefix))) :]
        self._llm.reset()
        self._llm.eval(tokens)
        logits = np.asarray(self._llm.scores[len(tokens) - 1], np.float64)
        odds = np.exp(logits - logits.max())
        return float(odds[self._end_ids].sum() / odds.sum())

    async def end_probability(self, text: str) -> float:
        return await run_blocking(self._worker, self.end_probability_sync, text)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


def load_text_turn_model() -> LlamaTextTurn | None:
    """The embedded text check, or None (logged) without llama-cpp-python or the weights:
    the endpointer then goes by the audio model alone."""
    model: LlamaTextTurn | None = None
    try:
        model = LlamaTextTurn()
        model.end_probability_sync("hello")  # it runs, and the first run is paid
    except Exception as exc:  # missing package or weights: end of turn goes on without it
        log.warning("text end-of-turn check unavailable: %s", exc)
        if model is not None:
            model.close()  # its worker thread and context
        return None
    return model
