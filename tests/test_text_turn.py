"""The text end-of-turn check (models/turn/text.py) with the embedded SmolLM2 weights.

What the endpointer relies on: a finished question or request scores over the default bar,
a sentence broken off after a function word scores far under it, and what the model reads
is the caller's words alone (case and Whisper's punctuation do not count).
"""

from __future__ import annotations

import asyncio

import pytest

from voicebot.agent.config import AgentConfig
from voicebot.models.turn.text import MAX_WORDS, LlamaTextTurn, caller_words, ends_in_a_number

BAR = AgentConfig().turn_text_threshold


@pytest.fixture(scope="module")
def model() -> LlamaTextTurn:
    m = LlamaTextTurn()
    yield m
    m.close()


def test_caller_words_drop_case_and_punctuation() -> None:
    assert caller_words("My number is 45.") == ["my", "number", "is", "45"]
    assert caller_words("I'd like to, um...") == ["i'd", "like", "to", "um"]
    assert caller_words(" ... ") == []
    assert len(caller_words("word " * 100)) == MAX_WORDS


@pytest.mark.parametrize("text", ["Are you open on Sunday?", "Can I talk to a person, please?",
                                  "What time do you open on Saturday?"])  # fmt: skip
def test_finished_questions_score_over_the_bar(model: LlamaTextTurn, text: str) -> None:
    assert model.end_probability_sync(text) >= BAR


@pytest.mark.parametrize("text", ["My name is", "I'd like to book a", "What time do you",
                                  "Can you tell me"])  # fmt: skip
def test_broken_off_sentences_score_far_under_it(model: LlamaTextTurn, text: str) -> None:
    assert model.end_probability_sync(text) < BAR / 3


def test_punctuation_does_not_count_and_no_words_is_no_end(model: LlamaTextTurn) -> None:
    # Whisper writes "My name is." for a caller who stopped mid-sentence.
    assert model.end_probability_sync("My name is.") == model.end_probability_sync("my name is")
    assert model.end_probability_sync("") == 0.0
    assert asyncio.run(model.end_probability("...")) == 0.0


def test_a_number_at_the_end_can_always_go_on(model: LlamaTextTurn) -> None:
    # "my number is four five | seven two": Whisper hears "My number is 45." at the pause.
    assert ends_in_a_number(caller_words("My number is 45.")) and not ends_in_a_number([])
    assert not ends_in_a_number(caller_words("A table for two."))
    assert model.end_probability_sync("My number is 45.") == 0.0
    assert model.end_probability_sync("The code is 1 2 3") == 0.0
