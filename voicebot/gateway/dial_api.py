"""`POST /v1/calls`: place an outbound call (DESIGN.md section 4a).

Place in the flow: the body is validated here into a `calls.outbound.OutboundRequest` and
handed to the call manager's `OutboundCalls`, which applies the campaign limits and has
the SIP leg dial it. The answer comes at once with the call's id (201): the ring, answer
or refusal is the call's to tell, in its record (`GET /v1/calls/{id}`: `end_reason` busy,
no_answer, rejected, unreachable, auth_failed, cancelled) and in its webhooks.
`DELETE /v1/calls/{id}` (calls_api.py) hangs it up: CANCEL while ringing, BYE after.
"""

from __future__ import annotations

from typing import Literal, Protocol

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from voicebot.calls.manager import CallManager, CallRefusedError
from voicebot.calls.outbound import NoDialerError, OutboundLimitError, OutboundRequest, Trunk
from voicebot.calls.variables import MAX_VALUE, MAX_VARIABLES, call_variables
from voicebot.config import Settings
from voicebot.gateway.ws import bearer_required


class _Gateway(Protocol):
    settings: Settings
    manager: CallManager | None


class TrunkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proxy: str | None = Field(None, max_length=256, description="outbound proxy SIP URI")
    username: str | None = Field(None, max_length=128, description="digest user (401/407)")
    password: str | None = Field(None, max_length=256)


class DialIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "examples": [{"to": "sip:+15551230001@trunk.example.com", "from": "+15559870000",
                      "variables": {"customer_id": "C-4711", "first_name": "Ada"},
                      "greeting": "Hello {{first_name}}, this is the clinic calling about "
                                  "your appointment."}],
    })  # fmt: skip

    to: str = Field(max_length=256, description="a SIP URI, or a number dialled via the trunk")
    from_: str | None = Field(None, alias="from", max_length=64,
                              description="caller id: the From user")  # fmt: skip
    trunk: TrunkIn | None = None
    variables: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_VARIABLES,
        description="call variables (names normalised; values at most 256 characters)",
    )  # fmt: skip
    greeting: str | None = Field(None, max_length=2000, description="this call's greeting")
    system_prompt: str | None = Field(None, max_length=8000)
    webhook_url: AnyHttpUrl | None = Field(None, description="also send this call's webhooks here")
    ring_timeout_s: float | None = Field(None, gt=0, le=300)
    early_media: Literal["ignore", "pass"] | None = None


class DialOut(BaseModel):
    call_id: str
    status: Literal["dialling"]
    to: str


def dial_router(state: _Gateway) -> APIRouter:
    authorized = bearer_required(lambda: state.settings.api_token)

    router = APIRouter(prefix="/v1/calls", tags=["calls"], dependencies=[Depends(authorized)])

    @router.post(
        "", status_code=201, response_model=DialOut, summary="Place an outbound call",
        description="Dials at once and answers with the call's id; how the call went (answered,"
        " busy, no_answer, rejected, unreachable, auth_failed, cancelled) is in its record and"
        " webhooks.",
        responses={400: {"description": "`to`, `from` or the trunk cannot be dialled"},
                   401: {"description": "bearer token missing or wrong"},
                   429: {"description": "outbound limits (calls up at once, calls per"
                                        " second): retry after `Retry-After` seconds"},
                   503: {"description": "no capacity, shutting down, or SIP is off"}},
    )  # fmt: skip
    async def place_call(body: DialIn, response: Response) -> DialOut:
        manager = state.manager
        if manager is None:
            raise HTTPException(503, "starting")
        too_long = [k for k, v in body.variables.items() if len(v) > MAX_VALUE]
        if too_long:
            raise HTTPException(400, f"variable values over {MAX_VALUE} characters: {too_long[:5]}")
        trunk = body.trunk or TrunkIn()
        request = OutboundRequest(
            to=body.to, caller_id=body.from_,
            trunk=Trunk(trunk.proxy, trunk.username, trunk.password),
            variables=call_variables(body.variables), greeting=body.greeting,
            system_prompt=body.system_prompt,
            webhook_url=str(body.webhook_url) if body.webhook_url else None,
            ring_timeout_s=body.ring_timeout_s, early_media=body.early_media,
        )  # fmt: skip
        try:
            call_id = manager.outbound.place(request)
        except ValueError as exc:
            raise HTTPException(400, str(exc)[:300]) from None
        except OutboundLimitError as exc:
            manager.metrics.outbound_limited.inc()
            retry = str(max(1, round(exc.retry_after_s + 0.49)))
            raise HTTPException(429, str(exc), headers={"Retry-After": retry}) from None
        except CallRefusedError as exc:
            raise HTTPException(503, f"not dialled: {exc}", headers={"Retry-After": "10"}) from None
        except NoDialerError as exc:
            raise HTTPException(503, str(exc)) from None
        response.headers["Location"] = f"/v1/calls/{call_id}"
        return DialOut(call_id=call_id, status="dialling", to=body.to)

    return router
