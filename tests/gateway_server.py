"""`voicebot serve` as a real process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, wait_http


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def gateway(tmp_path: Path, **env: str) -> Iterator[Gateway]:
    port = free_port()
    settings = {
        "VOICEBOT_HOST": "127.0.0.1",
        "VOICEBOT_PORT": str(port),
        "VOICEBOT_SIP_PORT": "0",
        "VOICEBOT_ENGINES__LLM": "scripted",
        "VOICEBOT_AGENT__GREETING": "",
        "VOICEBOT_DATA_DIR": str(tmp_path / "data"),  # call records and recordings
        **env,
    }
    log_path = tmp_path / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voicebot", "serve"],
            env={**os.environ, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(proc, port, log_path)
    try:
        wait_http(f"{gw.http}/healthz", timeout_s=120, proc=proc)
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)  # second signal: no drain wait
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
