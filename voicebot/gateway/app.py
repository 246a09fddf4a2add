"""The FastAPI application: routes of DESIGN.md section 4 over one CallManager.

`create_app` loads the engines (off the event loop) and warms them up in the lifespan, so
the first caller does not pay for model initialisation; `/healthz` says "starting" until
then and calls are refused with "try again later". Other transport servers (SIP) are
`calls.service.Service`s the wiring hands in: started with the same call manager, shown in
`/healthz` under their name, closed after the drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voicebot import __version__
from voicebot.audio.resample import prepare as prepare_resamplers
from voicebot.calls.cpu_calibration import calibrate
from voicebot.calls.loop_watch import LoopWatch
from voicebot.calls.manager import CallManager, Refusal
from voicebot.calls.metrics import GatewayMetrics
from voicebot.calls.records.service import CallRecords
from voicebot.calls.service import Service, ServiceFactory
from voicebot.calls.webhooks import WebhookSender
from voicebot.config import Settings
from voicebot.gateway.admin_api import admin_router
from voicebot.gateway.caller_info import caller_info
from voicebot.gateway.calls_api import calls_router
from voicebot.gateway.dial_api import dial_router
from voicebot.gateway.errors import use_error_shape
from voicebot.gateway.streams import streams_router
from voicebot.gateway.streams_freeswitch import freeswitch_router
from voicebot.gateway.webhooks_api import router as webhooks_router
from voicebot.gateway.webrtc.signalling import OfferError, WebRtcGateway
from voicebot.gateway.ws import CLOSE_TRY_AGAIN, bearer_ok, websocket_call
from voicebot.models.base import Engines
from voicebot.models.factory import build_engines, warm_up

log = logging.getLogger("voicebot.gateway")
STATIC_DIR = resources.files("voicebot.gateway").joinpath("static")


class GatewayState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.manager: CallManager | None = None
        self.records: CallRecords | None = None
        self.webhooks: WebhookSender | None = None
        self.webrtc: WebRtcGateway | None = None
        self.services: list[Service] = []


def watch_records(metrics: GatewayMetrics, records: CallRecords) -> None:
    """The records gauges read the writer when scraped."""
    writer = records.writer
    if writer is not None:
        metrics.records_backlog.set_function(lambda: writer.backlog)
        metrics.database_up.set_function(lambda: 1.0 if writer.database_up else 0.0)
    metrics.recordings_bytes.set_function(lambda: records.recording_bytes)


def watch_webhooks(metrics: GatewayMetrics, sender: WebhookSender) -> None:
    """The webhook gauges read the sender's figures of its last poll when scraped."""
    metrics.webhook_pending.set_function(lambda: sender.pending)
    metrics.webhook_oldest_pending.set_function(sender.oldest_pending_s)


def create_app(
    settings: Settings,
    engines: Engines | None = None,
    services: Sequence[ServiceFactory] = (),
    request_exit: Callable[[], None] | None = None,
) -> FastAPI:
    """The gateway's HTTP app. `request_exit` is what `POST /v1/admin/drain` calls to drain
    and exit as SIGTERM does (the server's); without it the drain only stops new calls."""
    state = GatewayState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        ready = engines or await asyncio.to_thread(build_engines, settings.engines)
        # SIP (8 kHz), WebRTC (48 kHz) and the WebSocket's other rates.
        await asyncio.to_thread(prepare_resamplers, (8000, 24000, 48000))
        if settings.server.warm_up:
            await warm_up(ready)
        if settings.records.enabled:
            state.records = CallRecords(settings, state.metrics)
            await state.records.start()
            watch_records(state.metrics, state.records)
            if settings.webhooks.urls:
                state.webhooks = WebhookSender.for_records(state.records, state.metrics)
                await state.webhooks.start()
                watch_webhooks(state.metrics, state.webhooks)
        state.manager = CallManager(settings, ready, state.metrics, records=state.records)
        if settings.server.cpu_budget > 0 and settings.server.cpu_calibrate:
            calibration = await asyncio.to_thread(
                calibrate, state.manager.vad_model, state.manager.turn_model
            )
            state.manager.cpu.calibrate(calibration.ratio)
            log.info("CPU calibration %s: %.2f %% of a core per call until measured",
                     calibration.describe(), 100 * state.manager.cpu.per_call)  # fmt: skip
        state.manager.measure_cpu()
        state.webrtc = WebRtcGateway(state.manager, settings.webrtc)
        for factory in services:
            service = factory(state.manager)
            await service.start()
            state.services.append(service)
        log.info("gateway ready on http://%s:%d", settings.host, settings.port)
        # What start-up built (modules, models, tables: ~150 000 objects) lives as long as
        # the process; left to the cyclic GC, each full collection walks it all on the event
        # loop, ~0.1 s during which no media tick runs (late packets on every call).
        gc.collect()
        gc.freeze()
        watch = None
        if settings.server.stall_log_ms > 0:
            watch = LoopWatch(
                state.metrics.loop_stalls, state.metrics.gc_seconds, settings.server.stall_log_ms
            )
            watch.start()
        try:
            yield
        finally:
            await state.manager.drain(0 if state.manager.draining else 5.0)
            await state.webrtc.close_all()
            for service in state.services:
                await service.close()
            state.manager.close()
            if state.webhooks is not None:
                await state.webhooks.close()
            if state.records is not None:
                await state.records.close()
            if watch is not None:
                watch.close()

    app = FastAPI(title="voicebot", version=__version__, lifespan=lifespan)
    app.state.gateway = state
    use_error_shape(app)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(calls_router(state))
    app.include_router(dial_router(state))
    app.include_router(admin_router(state, request_exit))
    app.include_router(webhooks_router)
    app.include_router(streams_router(lambda: state.manager))
    app.include_router(freeswitch_router(lambda: state.manager))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR.joinpath("index.html")), media_type="text/html")

    @app.get("/calls", include_in_schema=False)
    async def call_inspector() -> FileResponse:
        """The call inspector page; it reads /v1/calls (with the token it asks for)."""
        return FileResponse(str(STATIC_DIR.joinpath("calls.html")), media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        manager = state.manager
        body: dict[str, Any] = {
            "status": "starting" if manager is None else ("draining" if manager.draining else "ok"),
            "version": __version__,
            "active_calls": 0 if manager is None else len(manager.calls),
            "max_calls": settings.server.max_calls,
            "webrtc_peers": 0 if state.webrtc is None else len(state.webrtc.peers),
            "sip": None,  # the SIP service's status when SIP is on
            **{service.name: service.status() for service in state.services},
            "engine_wait_s": 0.0 if manager is None else round(manager.engine_backlog.wait_s(), 3),
            "cpu": None if manager is None else manager.cpu.status(),
            "records": None if state.records is None else state.records.status(),
            "webhooks": None if state.webhooks is None else state.webhooks.status(),
            "tasks": len(asyncio.all_tasks()),
        }
        # Alive (200) while it runs, draining included; whether it takes calls is /readyz.
        return JSONResponse(body, status_code=503 if manager is None else 200)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 while a new call would be taken; 503 + Retry-After while starting, draining,
        full or overloaded: the admission rule (`CallManager.readiness`, each service's),
        for a load balancer's health check (HAProxy `option httpchk GET /readyz`)."""
        manager = state.manager
        if manager is None:
            return JSONResponse({"status": "starting"}, status_code=503,
                                headers={"Retry-After": "5"})  # fmt: skip
        refusal = manager.readiness()
        for service in state.services:
            refusal = refusal or service.readiness()
        if refusal is None:
            return JSONResponse({"status": "ready", "active_calls": manager.active})
        kind, why = refusal
        status = "draining" if kind is Refusal.SHUTTING_DOWN else "unavailable"
        retry_after = "30" if status == "draining" else "5"
        return JSONResponse({"status": status, "reason": why, "active_calls": manager.active},
                            status_code=503, headers={"Retry-After": retry_after})  # fmt: skip

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/webrtc/offer")
    async def webrtc_offer(request: Request) -> JSONResponse:
        if settings.api_token and not bearer_ok(request, settings.api_token):
            state.metrics.rejected_total.labels("webrtc", "unauthorized").inc()
            return JSONResponse({"error": "unauthorized: bearer token required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if state.webrtc is None:
            return JSONResponse({"error": "try again later: starting"}, status_code=503)
        try:
            answer = await state.webrtc.answer(await request.body(), caller_info(request))
        except OfferError as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=exc.headers)
        return JSONResponse(answer)

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket) -> None:
        if state.manager is None:
            await ws.accept()
            await ws.close(CLOSE_TRY_AGAIN, "try again later: starting")
            return
        await websocket_call(ws, state.manager)

    return app
