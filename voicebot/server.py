"""`voicebot serve`: the wiring of the gateway process, and uvicorn running it with a
graceful drain on SIGTERM/SIGINT.

The HTTP app (`gateway/`) and SIP (`telephony/`) never import each other; here, above
both, the SIP gateway is handed to the app as a service when `VOICEBOT_SIP_PORT` is set,
the AudioSocket server when `VOICEBOT_AUDIOSOCKET_PORT` is.

The first signal stops new calls and lets running ones end on their own for up to
`server.shutdown_grace_s`; then the server stops and the process exits 0. A second signal
ends everything at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from voicebot.calls.manager import CallManager
from voicebot.calls.service import Service, ServiceFactory
from voicebot.config import Settings
from voicebot.gateway.app import create_app
from voicebot.telephony.audiosocket import AudioSocketServer
from voicebot.telephony.gateway import SipGateway

log = logging.getLogger("voicebot.gateway")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self.should_exit:
            self.force_exit = True
            self.should_exit = True
            return
        app = self.config.loaded_app
        manager = getattr(getattr(getattr(app, "app", app), "state", None), "gateway", None)
        manager = manager.manager if manager is not None else None
        if manager is None:
            self.should_exit = True
            return
        log.info("signal %s: draining calls before exit", signal.Signals(sig).name)
        loop = asyncio.get_event_loop()
        self._draining = loop.create_task(self._drain(manager))

    async def _drain(self, manager: CallManager) -> None:
        try:
            await manager.drain(self.settings.server.shutdown_grace_s)
        finally:
            self.should_exit = True


def services_of(settings: Settings) -> list[ServiceFactory]:
    """The transport servers besides HTTP that `settings` turn on."""
    services: list[ServiceFactory] = []

    def sip(manager: CallManager) -> Service:
        return SipGateway(manager, settings)

    def audiosocket(manager: CallManager) -> Service:
        return AudioSocketServer(manager, settings)

    if settings.sip_port:
        services.append(sip)
    if settings.audiosocket_port:
        services.append(audiosocket)
    return services


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server: DrainingServer | None = None

    def request_exit() -> None:  # POST /v1/admin/drain: as if SIGTERM came
        if server is not None:
            server.handle_exit(signal.SIGTERM, None)

    app = create_app(settings, services=services_of(settings), request_exit=request_exit)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=1 << 20,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(config, settings)
    server.run()
    return 0
