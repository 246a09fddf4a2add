"""What a transport server looks like to the process that runs it.

The HTTP app (`gateway/`) and the SIP gateway (`telephony/`) never import each other: the
wiring (`voicebot/server.py`) hands the app factories of other services, the app starts
them with its call manager once the engines are loaded, shows their `status()` in
`/healthz` under their `name`, asks their `readiness()` for `/readyz`, and closes them on
shutdown after the drain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from voicebot.calls.manager import CallManager, Refusal


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None:
        """End this service's calls (after the manager's drain) and free its sockets."""
        ...

    def status(self) -> dict[str, object]:
        """JSON-ready figures for `/healthz`."""
        ...

    def readiness(self) -> tuple[Refusal, str] | None:
        """Why this service would refuse a new call now beyond the manager's own rule
        (SIP: its media clock is at capacity), or None; `/readyz` says it."""
        ...


ServiceFactory = Callable[[CallManager], Service]
