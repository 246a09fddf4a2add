"""The webhook dead-letter view (DESIGN.md section 4a): `/v1/webhooks/deliveries`.

Place in the flow: the sender (calls/webhooks) writes each delivery's outcome to the
outbox; these routes list deliveries (pending, delivered or dead, per call, newest first,
keyset pages) and put a dead one back in the queue, due at once, for the sender to make.
Bearer token `VOICEBOT_API_TOKEN` as on all of `/v1`; errors are `{"error": ...}` like the
gateway's other routes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records.times import CursorError
from voicebot.calls.records.writes import utc_now
from voicebot.calls.webhooks import outbox
from voicebot.gateway.ws import bearer_ok

MAX_LIMIT = 500
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _engine(request: Request) -> AsyncEngine | JSONResponse:
    """The records' engine once the bearer token is checked, or the error to answer."""
    state = request.app.state.gateway
    token = state.settings.api_token
    if token and not bearer_ok(request, token):
        return _error(401, "unauthorized: bearer token required", **{"WWW-Authenticate": "Bearer"})
    records = state.records
    if records is None or records.engine is None:
        return _error(503, "call records are off or not started")
    return records.engine


@router.get("/deliveries")
async def list_deliveries(
    request: Request,
    status: Annotated[outbox.Status | None, Query(description="pending, delivered or dead")] = None,
    call_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    """Webhook deliveries, newest first: `deliveries` and `next_cursor` (null on the last
    page). Each has id (the webhook-id), url, call_id, seq, type, attempts, status,
    created_at, next_attempt_at, delivered_at and last_error."""
    engine = _engine(request)
    if isinstance(engine, JSONResponse):
        return engine
    try:
        page, next_cursor = await outbox.list_deliveries(
            engine, status=status, call_id=call_id, limit=limit, cursor=cursor
        )
    except CursorError:
        return _error(400, "bad cursor: pass next_cursor of a previous page as it was")
    return JSONResponse({"deliveries": page, "next_cursor": next_cursor})


@router.post("/deliveries/{delivery_id}/retry", status_code=202)
async def retry_delivery(
    request: Request, delivery_id: Annotated[str, Path(max_length=64)]
) -> JSONResponse:
    """Put a dead delivery back in the queue, due now: 202 with the delivery (also when it
    is pending already); 409 if it was delivered; 404 if there is no such delivery."""
    engine = _engine(request)
    if isinstance(engine, JSONResponse):
        return engine
    delivery = await outbox.retry(engine, delivery_id, utc_now())
    if delivery is None:
        return _error(404, f"no webhook delivery {delivery_id}")
    if delivery["status"] == "delivered":
        return _error(409, f"webhook delivery {delivery_id} was delivered already")
    sender = getattr(request.app.state.gateway, "webhooks", None)
    if sender is not None:
        sender.wake()  # now, not at its next poll
    return JSONResponse(delivery, status_code=202)
