"""A cluster of `voicebot serve` processes on one machine, for the scale-out tests.

Each gateway has a loopback address of its own (127.0.0.2, 127.0.0.3, ...: Linux routes all of
127.0.0.0/8 to `lo`), with HTTP, SIP and RTP bound there, a disjoint RTP port range, its own
data directory (recordings) and its own `VOICEBOT_GATEWAY_ID`, and all of them write their
call records to ONE database (a PostgreSQL URL from the `postgres_url` fixture). Engines are
the light ones (Whisper tiny.en, espeak-ng, the scripted LLM) so that three gateways fit on a
2-core machine. The processes start concurrently; `Member.kill()` / `terminate()` /
`restart()` take one of them down and up again as an operator (or a crash) would.

    with cluster(tmp_path, fresh_database(postgres_url)) as gws:
        gws.members[0].sip_uri     # sip:127.0.0.2:<port>, for a dispatcher list
        gws.members[1].http        # http://127.0.0.3:<port>, for an HTTP load balancer
        gws.calls()                # every record in the shared store (GET /v1/calls)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
LIGHT_ENGINES = {
    "VOICEBOT_ENGINES__LLM": "scripted",
    "VOICEBOT_ENGINES__STT_MODEL": "tiny.en",
    "VOICEBOT_ENGINES__TTS": "espeak",
    "VOICEBOT_AGENT__GREETING": "",
}


def free_port_on(address: str, kind: int = socket.SOCK_STREAM) -> int:
    """A port free on `address` (TCP by default, `socket.SOCK_DGRAM` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass
class Member:
    """One gateway of the cluster: its addresses, its process (None while down), its log."""

    name: str
    address: str
    http_port: int
    sip_port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.address}:{self.http_port}/ws"

    @property
    def sip_uri(self) -> str:
        return f"sip:{self.address}:{self.sip_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """Launch the process (returns at once; `wait_ready` waits for it)."""
        assert not self.running, f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voicebot", "serve"],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until GET /readyz answers 200 (models loaded, taking calls)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http}/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready in {timeout_s} s:\n{self.log()[-3000:]}")

    def restart(self, timeout_s: float = 120.0) -> None:
        """Start it again on the same addresses and ports, and wait until it is ready."""
        self.start()
        self.wait_ready(timeout_s)

    def kill(self) -> int:
        """SIGKILL (a crash): no goodbye to anyone; returns the exit status (-9)."""
        assert self.proc is not None
        self.proc.kill()
        return self._reap(10)

    def terminate(self) -> None:
        """SIGTERM (a drain): returns at once; `wait_exit` gives the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        return self._reap(timeout_s)

    def stop(self) -> None:
        """Tear down (end of the test): SIGINT twice (no drain wait), SIGKILL if stuck."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.send_signal(signal.SIGINT)
        try:
            self._reap(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self._reap(10)

    def _reap(self, timeout_s: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        self.exit_codes.append(code)
        return code


@dataclass
class Cluster:
    members: list[Member]
    database_url: str

    def __getitem__(self, index: int) -> Member:
        return self.members[index]

    def by_name(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def api(self) -> Member:
        """A running member, to ask the shared store through."""
        for member in self.members:
            if member.running:
                return member
        raise RuntimeError("no gateway of the cluster is running")

    def calls(self, **params: Any) -> list[dict[str, Any]]:
        """Every call record in the shared store (all gateways), newest first, all pages."""
        out: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": 500, **params}
        while True:
            page = httpx.get(f"{self.api().http}/v1/calls", params=query, timeout=10)
            page.raise_for_status()
            body = page.json()
            out.extend(body["calls"])
            if not body.get("next_cursor"):
                return out
            query["cursor"] = body["next_cursor"]

    def call(self, call_id: str) -> dict[str, Any]:
        got = httpx.get(f"{self.api().http}/v1/calls/{call_id}", timeout=10)
        got.raise_for_status()
        return got.json()

    def stop(self) -> None:
        for member in self.members:
            member.stop()


@contextlib.contextmanager
def cluster(
    tmp_path: Path,
    database_url: str,
    *,
    addresses: tuple[str, ...] = ADDRESSES,
    sip: bool = True,
    rtp_base: int = 31000,
    rtp_span: int = 400,
    **env: str,
) -> Iterator[Cluster]:
    """Start one gateway per address (concurrently), all on `database_url`; stop them after.

    Gateway i is named `gw{i+1}`, has RTP ports `rtp_base + i*rtp_span` .. `+ rtp_span - 1`,
    and a free HTTP port and (with `sip`) a free UDP SIP port on its address. `env` is added to
    every gateway's environment (e.g. `VOICEBOT_SERVER__MAX_CALLS="10"`)."""
    members = []
    for i, address in enumerate(addresses):
        name = f"gw{i + 1}"
        http_port = free_port_on(address)
        sip_port = free_port_on(address, socket.SOCK_DGRAM) if sip else 0
        low = rtp_base + i * rtp_span
        settings = {
            **LIGHT_ENGINES,
            "VOICEBOT_HOST": address,
            "VOICEBOT_PORT": str(http_port),
            "VOICEBOT_SIP_PORT": str(sip_port),
            "VOICEBOT_SIP__BIND": address,
            "VOICEBOT_SIP__ADVERTISE_ADDRESS": address,
            "VOICEBOT_SIP__RTP_PORT_MIN": str(low),
            "VOICEBOT_SIP__RTP_PORT_MAX": str(low + rtp_span - 1),
            "VOICEBOT_GATEWAY_ID": name,
            "VOICEBOT_DATABASE_URL": database_url,
            "VOICEBOT_DATA_DIR": str(tmp_path / name),
            **env,
        }
        members.append(Member(name, address, http_port, sip_port, settings,
                              tmp_path / f"{name}.log"))  # fmt: skip
    gws = Cluster(members, database_url)
    try:
        for member in members:
            member.start()
        for member in members:
            member.wait_ready()
        yield gws
    finally:
        gws.stop()
