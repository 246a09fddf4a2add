"""`python -m tests.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`) with the AMX guard of `voicebot.models.llm.llama_amx`
applied first, so the tests' shared LLM server runs on AMX CPUs too."""

from __future__ import annotations

import runpy

from voicebot.models.llm.llama_amx import avoid_amx_repack

if __name__ == "__main__":
    avoid_amx_repack()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
