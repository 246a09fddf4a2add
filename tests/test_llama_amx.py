"""The AMX guard of the in-process llama.cpp engine: which CPUs it applies to, and that a
model loaded through it generates (on an AMX CPU, without the guard, the first token
segfaults)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from voicebot.models.base import ChatMessage, TextDelta
from voicebot.models.llm import llama_amx


def test_amx_is_read_from_the_flags_line(tmp_path: Path) -> None:
    with_amx = tmp_path / "amx"
    with_amx.write_text("model name\t: Intel(R) Xeon(R)\nflags\t\t: avx2 amx_bf16 amx_int8\n")
    without = tmp_path / "plain"
    without.write_text("model name\t: AMD EPYC\nflags\t\t: sse4_2 avx2 avx512f avx512_vnni\n")
    assert llama_amx.cpu_has_amx.__wrapped__(with_amx)
    assert not llama_amx.cpu_has_amx.__wrapped__(without)
    assert not llama_amx.cpu_has_amx.__wrapped__(tmp_path / "missing")


def test_embedded_llama_generates_on_this_cpu() -> None:
    pytest.importorskip("llama_cpp")
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    llm = LlamaCppLanguageModel(max_tokens=12)

    async def reply() -> str:
        pieces = [p async for p in llm.stream([ChatMessage("user", "Say hello.")])]
        return "".join(p.text for p in pieces if isinstance(p, TextDelta))

    assert asyncio.run(reply()).strip()
    if llama_amx.cpu_has_amx():
        import llama_cpp.llama_cpp as bindings

        assert bindings.llama_model_default_params().use_extra_bufts is False
