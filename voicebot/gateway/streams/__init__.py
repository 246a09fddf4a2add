"""CPaaS media streams over WebSocket: `WS /v1/streams/{twilio,telnyx,vonage}`.

Each provider is one `calls.leg.Leg` (`base.StreamLeg` does pacing, barge-in `clear`,
marks, DTMF and close codes once; each module parses and serialises its own wire).
The routes are guarded by the bearer token like `/ws` (`Authorization: Bearer` or
`?token=`; a wrong one closes with 1008). A socket with neither (Twilio cannot add either
to a `<Stream>` URL) must carry it in its start message as the custom parameter (Twilio
`<Parameter name="token">`, Telnyx `custom_parameters`) or header (Vonage) `token`, else
it is closed with 1008 there; the token is never kept in the call record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket

from voicebot.calls.leg import run_leg
from voicebot.calls.manager import CallManager
from voicebot.gateway.streams.base import CLOSE_POLICY, CLOSE_TRY_AGAIN, StreamLeg
from voicebot.gateway.streams.telnyx import TelnyxLeg
from voicebot.gateway.streams.twilio import TwilioLeg
from voicebot.gateway.streams.vonage import VonageLeg
from voicebot.gateway.ws import bearer_ok

PROVIDERS: dict[str, type[StreamLeg]] = {
    "twilio": TwilioLeg,
    "telnyx": TelnyxLeg,
    "vonage": VonageLeg,
}

__all__ = ["PROVIDERS", "StreamLeg", "TelnyxLeg", "TwilioLeg", "VonageLeg", "streams_router"]


async def stream_call(
    ws: WebSocket, manager: CallManager | None, leg_class: type[StreamLeg]
) -> None:
    """One provider media stream: authenticate, then one call over this socket."""
    if manager is None:
        await ws.accept()
        await ws.close(CLOSE_TRY_AGAIN, "try again later: starting")
        return
    token = manager.settings.api_token
    pending: str | None = None
    if token and not bearer_ok(ws, token):
        if ws.headers.get("authorization") or ws.query_params.get("token"):
            manager.refused(leg_class.transport, "unauthorized")
            await ws.accept()
            await ws.close(CLOSE_POLICY, "unauthorized: bearer token required")
            return
        pending = token  # none given: the start message must carry it (Twilio cannot
        # put a query string or a header on a <Stream> URL, only <Parameter>s)
    await run_leg(manager, leg_class(ws, manager, pending))


def streams_router(manager: Callable[[], CallManager | None]) -> APIRouter:
    """The `/v1/streams/...` WebSocket routes over the gateway's call manager (once built)."""
    router = APIRouter()

    def route(leg_class: type[StreamLeg]) -> Callable[[WebSocket], Awaitable[None]]:
        async def endpoint(ws: WebSocket) -> None:
            await stream_call(ws, manager(), leg_class)

        return endpoint

    for name, leg_class in PROVIDERS.items():
        router.add_api_websocket_route(f"/v1/streams/{name}", route(leg_class), f"stream_{name}")
    return router
