"""`POST /v1/admin/drain`: take this gateway out of service for a rolling upgrade.

Place in the flow: the same drain as SIGTERM (`voicebot/server.py`): from this request on,
new calls are refused (SIP INVITE 503, OPTIONS 503 so a dispatcher stops sending, `/readyz`
503, WebSocket 1013), running calls end on their own within `server.shutdown_grace_s`,
then the process exits 0. Answered at once (202) with the calls still running.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from voicebot.calls.manager import CallManager
from voicebot.config import Settings
from voicebot.gateway.ws import bearer_required


class _Gateway(Protocol):
    settings: Settings
    manager: CallManager | None


class DrainOut(BaseModel):
    status: Literal["draining"]
    active_calls: int
    grace_s: float
    exits: bool


def admin_router(state: _Gateway, request_exit: Callable[[], None] | None) -> APIRouter:
    authorized = bearer_required(lambda: state.settings.api_token)

    router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(authorized)])

    @router.post("/drain", status_code=202, response_model=DrainOut,
                 summary="Stop taking calls, let running ones end, then exit")  # fmt: skip
    async def drain() -> JSONResponse:
        manager = state.manager
        if manager is None:
            raise HTTPException(503, "starting")
        if request_exit is not None and not manager.draining:
            request_exit()  # the server's SIGTERM path: drain, then exit 0 (a second would
            # be SIGTERM's "twice: end everything at once", so only the first asks)
        manager.draining = True  # at once, whoever carries the drain on
        body = DrainOut(status="draining", active_calls=manager.active,
                        grace_s=state.settings.server.shutdown_grace_s,
                        exits=request_exit is not None)  # fmt: skip
        return JSONResponse(body.model_dump(), status_code=202)

    return router
