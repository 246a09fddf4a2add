"""Engines as a shared tier (issue 15 item 3): two gateways, one OpenAI-compatible LLM server.

llama.cpp's server (`llama_cpp.server` on SmolLM2-135M, what vLLM or Ollama would be in
production) on loopback; gateways on 127.0.0.2 and 127.0.0.3 with `[engines] llm = "openai"`
pointing at it, STT and TTS in each gateway. A spoken question to each gateway comes back as a
bot reply with no engine error, and the server's access log counts a chat completion per call
(beyond each gateway's start-up warm-up):
one model loaded once, its cost paid where the server runs, not in every gateway.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np

from tests import audiogen
from tests.cluster import cluster
from tests.gateway_client import Received, call
from tests.postgres import fresh_database
from tests.servers import llama_chat_server
from voicebot.models import weights

ADDRESSES = ("127.0.0.2", "127.0.0.3")
QUESTION = "What time do you open on Saturday?"


def _question() -> np.ndarray:
    speech = audiogen.espeak(QUESTION)
    pause = np.zeros(16000, np.int16)
    return np.concatenate([pause, speech, np.zeros(16000 * 6, np.int16)])


def _completions(server_log: Path) -> int:
    """Chat completions answered so far, from uvicorn's access log lines
    ('127.0.0.1:40312 - "POST /v1/chat/completions HTTP/1.1" 200 OK')."""
    text = server_log.read_text(errors="replace")
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1.1" 200', text))


async def _both(urls: list[str], audio: np.ndarray) -> list[Received]:
    return list(await asyncio.gather(*(call(u, audio, linger_s=1.0) for u in urls)))


def test_two_gateways_share_one_llm_server(postgres_url: str, tmp_path: Path) -> None:
    server_log = tmp_path / "llama-server.log"
    with llama_chat_server(str(weights.SMOLLM2_GGUF.verified_path()), server_log) as base_url:
        env = {
            "VOICEBOT_ENGINES__LLM": "openai",
            "VOICEBOT_ENGINES__LLM_URL": base_url,
            "VOICEBOT_ENGINES__LLM_REMOTE_MODEL": "smollm2",
            "VOICEBOT_ENGINES__LLM_MAX_TOKENS": "24",
            "VOICEBOT_RECORDS__RECORDING": "false",
        }
        with cluster(tmp_path, fresh_database(postgres_url), addresses=ADDRESSES, sip=False,
                     **env) as gws:  # fmt: skip
            warm_ups = _completions(server_log)  # each gateway's start-up "Hi"
            got = asyncio.run(_both([m.ws for m in gws.members], _question()))
            logs = {m.name: m.log() for m in gws.members}
    for member_got, (name, log) in zip(got, logs.items(), strict=True):
        assert member_got.close_code == 1000, (name, member_got.close_code, log[-2000:])
        heard = " ".join(e["text"] for e in member_got.of("transcript") if e.get("final", True))
        assert "saturday" in heard.lower(), (name, heard)
        replies = [e["text"] for e in member_got.of("bot_text")]
        assert replies and "".join(replies).strip(), (name, member_got.events[-10:])
        assert not member_got.of("error"), (name, member_got.of("error"))
    # The calls' replies came from the server, beyond the gateways' warm-ups.
    assert _completions(server_log) >= warm_ups + len(got), server_log.read_text()[-3000:]
