"""What a transport server looks like to the process that runs it.

The HTTP app (`gateway/`) and the SIP gateway (`telephony/`) never import each other: the
wiring (`voicebot/server.py`) hands the app factories of other services, the app starts
them with its call manager once the engines are loaded, shows their `status()` in
`/healthz` under their `name`, and closes them on shutdown after the drain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from voicebot.calls.manager import CallManager


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None:
        """End this service's calls (after the manager's drain) and free its sockets."""
        ...

    def status(self) -> dict[str, object]:
        """JSON-ready figures for `/healthz`."""
        ...


ServiceFactory = Callable[[CallManager], Service]
