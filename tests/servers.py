"""Real local HTTP servers for client tests: started on 127.0.0.1, stopped after.

`llama_cpp.server` (llama-cpp-python[server]) serves the OpenAI chat API on SmolLM2. For the
audio endpoints, `openai_audio_app` serves /v1/audio/transcriptions and /v1/audio/speech on
our embedded Whisper and Piper engines, in the request/response shapes of OpenAI's API.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import encode_wav, read_wav_bytes, to_mono


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


@contextlib.contextmanager
def llama_chat_server(model_path: str, log_path: Path | None = None) -> Iterator[str]:
    """llama_cpp.server on a free loopback port; yields its /v1 base URL. With `log_path`, its
    output (uvicorn's access log: one line per request) goes there."""
    port = free_port()
    log = (log_path or Path(os.devnull)).open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.llama_server", "--model", model_path, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "1024", "--n_threads", "2",
         # Its default lets a new request abort the stream in progress: with several
         # gateways (or calls) on one server, requests must queue instead.
         "--interrupt_requests", "False"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def openai_audio_app(stt, tts):  # type: ignore[no-untyped-def]
    """FastAPI app with OpenAI's audio endpoints over our engines."""
    app = FastAPI()

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(file: UploadFile, model: str = Form(...)) -> JSONResponse:
        wav = read_wav_bytes(await file.read())
        text = (await stt.transcribe(to_mono(wav.samples))).text
        return JSONResponse({"text": text})

    @app.post("/v1/audio/speech")
    async def speech(body: dict) -> Response:
        if not body.get("input"):
            return JSONResponse({"error": {"message": "input is required"}}, status_code=400)
        audio = await tts.synthesize(body["input"])
        if body.get("response_format") == "pcm":
            return Response(resample_whole(audio, 16000, 24000).tobytes(), media_type="audio/pcm")
        return Response(encode_wav(np.asarray(audio, np.int16)), media_type="audio/wav")

    return app


@contextlib.contextmanager
def uvicorn_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve an ASGI app on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
