"""`/v1/calls`: the call records over HTTP (DESIGN.md section 4a).

Place in the flow: `app.create_app` includes `calls_router(state)`; the routes read the
records database through `calls.records.queries`, serve recordings from the recordings
directory and hang up live calls through the call manager. Every route wants the bearer
token when `VOICEBOT_API_TOKEN` is set (401 otherwise) and answers 503 while the records
are off or not yet open, except that `DELETE` still hangs up a call running here.

Call ids are SIP Call-IDs among others ("a84b4c76e66710@pc33.example.com", and '/' is
legal in them too), hence `{call_id:path}` and the sub-resources declared before the bare id.

Several gateways share one records database: reads answer from any of them, but hanging up
a live call and serving or erasing a recording kept on a gateway's own disk can only be done
by the call's gateway; another one answers 409 naming it in `X-Voicebot-Gateway`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.manager import CallManager
from voicebot.calls.records import queries
from voicebot.calls.records.queries import CallFilter
from voicebot.calls.records.recording import RecordingFiles
from voicebot.calls.records.retention import erase_call
from voicebot.calls.records.service import CallRecords
from voicebot.calls.records.times import CursorError
from voicebot.config import Settings
from voicebot.gateway.ws import bearer_required

HANGUP_REASON = "api_hangup"
# Names the gateway a call belongs to, on a 409 from another one; a load balancer sends a
# request carrying it to that gateway (deploy/haproxy/haproxy.cfg).
OWNER_HEADER = "X-Voicebot-Gateway"
Status = Literal["live", "ended"]
Format = Literal["json", "text"]


class GatewayLike(Protocol):
    """What the routes use of `app.GatewayState`."""

    settings: Settings
    records: CallRecords | None
    manager: CallManager | None


# -- response models (the OpenAPI schema) -------------------------------------------------------
_EXAMPLE_ID = "sip-a84b4c76e66710@pc33.example.com"
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": _EXAMPLE_ID, "gateway": "gw1:8000", "transport": "sip", "direction": "inbound",
    "from": "<sip:+15551230001@pbx.example.com>;tag=1928301774",
    "to": "<sip:frontdesk@voicebot.example.com>",
    "started_at": "2025-05-01T09:30:00.120000Z", "answered_at": "2025-05-01T09:30:00.410000Z",
    "ended_at": "2025-05-01T09:31:12.980000Z", "end_reason": "caller_hangup",
    "duration_s": 72.57, "turns": 6, "dtmf": "1", "transfer_target": None,
    "summary": {"user_turns": 3, "bot_turns": 3, "interruptions": 1,
                "voice_to_voice_ms_median": 742.5},
    "recording": f"/v1/calls/{_EXAMPLE_ID}/recording",
    "variables": {"customer_id": "C-4711", "p_asserted_identity": "<sip:+15551230001@pbx>"},
}  # fmt: skip
_TURNS_EXAMPLE: list[dict[str, Any]] = [
    {"idx": 0, "speaker": "bot", "text": "Bright Smile Dental, how can I help?",
     "heard": "Bright Smile Dental, how can I help?", "start_s": 0.3, "end_s": 2.6,
     "interrupted": False, "latency": None},
    {"idx": 1, "speaker": "user", "text": "When are you open on Saturday?",
     "heard": "When are you open on Saturday?", "start_s": 3.2, "end_s": 4.9,
     "interrupted": False, "latency": None},
    {"idx": 2, "speaker": "bot", "text": "On Saturday we are open from nine to one. Anything else?",
     "heard": "On Saturday we are open", "start_s": 5.6, "end_s": 7.1, "interrupted": True,
     "latency": {"speculative": False, "total_ms": 702.0, "voice_to_voice_ms": 740.0}},
]  # fmt: skip


class ErrorOut(BaseModel):
    detail: str = Field(examples=["no such call"])


class _CallBase(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="the call's id (a SIP Call-ID for SIP calls)")
    gateway: str = Field(description="the gateway that took the call")
    transport: str = Field(description="sip, ws, webrtc, or a media-stream provider")
    direction: str = Field(description="inbound | outbound")
    from_: str | None = Field(alias="from", description="caller (SIP From) if known")
    to: str | None = Field(description="callee (SIP To) if known")
    started_at: str = Field(description="ISO 8601 UTC: the call was set up")
    answered_at: str | None = Field(description="ISO 8601 UTC: the agent started")
    ended_at: str | None = Field(description="ISO 8601 UTC; null while the call is live")
    end_reason: str | None = Field(description="caller_hangup, bot_hangup, api_hangup, ...")
    duration_s: float | None = Field(description="answered (or started) to ended, seconds")
    dtmf: str = Field(description="the digits pressed, in order")
    transfer_target: str | None = Field(description="where the bot transferred the call")
    summary: dict[str, Any] | None = Field(
        description="user_turns, bot_turns, interruptions, voice_to_voice_ms_median; null"
        " while live"
    )  # fmt: skip
    recording: str | None = Field(description="URL of the WAV recording, null if none")
    variables: dict[str, str] = Field(
        default_factory=dict,
        description="call variables: what the caller's side knew (SIP X- headers, stream"
        " custom parameters, the POST /v1/calls body), names normalised (X-Customer-Id ->"
        " customer_id); they fill {{name}} in the greeting, system prompt and scripted replies",
    )  # fmt: skip


class CallSummary(_CallBase):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})

    turns: int = Field(description="caller and bot turns (counted when the call ends)")


class CallPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"calls": [_SUMMARY_EXAMPLE],
         "next_cursor": "WyIyMDI1LTA1LTAxVDA5OjMwOjAwLjEyKzAwOjAwIiwieCJd"}
    ]})  # fmt: skip

    calls: list[CallSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class TurnOut(BaseModel):
    idx: int
    speaker: Literal["user", "bot"]
    text: str = Field(description="what was said (the bot: the whole reply it meant to say)")
    heard: str = Field(description="the bot's words the caller heard; for the caller = text")
    start_s: float | None = Field(description="seconds of call audio")
    end_s: float | None
    interrupted: bool = Field(description="a barge-in cut this bot turn")
    latency: dict[str, Any] | None = Field(
        description="bot turns answering the caller: the turn_latency stage times"
    )


class CallDetail(_CallBase):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **_SUMMARY_EXAMPLE,
        "info": {"from": _SUMMARY_EXAMPLE["from"], "to": _SUMMARY_EXAMPLE["to"],
                 "call_id": "a84b4c76e66710@pc33.example.com"},
        "turns": _TURNS_EXAMPLE,
        "events": [{"type": "call_started", "call_id": _EXAMPLE_ID, "t": 0.0},
                   {"type": "state", "call_id": _EXAMPLE_ID, "t": 0.0, "state": "SPEAKING"}],
    }]})  # fmt: skip

    info: dict[str, Any] = Field(description="what the transport knew of the call")
    turns: list[TurnOut]
    events: list[dict[str, Any]] | None = Field(
        None, description="the call's events (DESIGN.md section 2) in order; left out with"
        " ?events=false",
    )  # fmt: skip


class TranscriptTurn(BaseModel):
    speaker: Literal["user", "bot"]
    text: str
    heard: str
    start_s: float | None
    end_s: float | None
    interrupted: bool


class TranscriptOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "call_id": _EXAMPLE_ID,
        "turns": [{k: v for k, v in turn.items() if k not in ("idx", "latency")}
                  for turn in _TURNS_EXAMPLE],
    }]})  # fmt: skip

    call_id: str
    turns: list[TranscriptTurn]


class HangupOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"call_id": _EXAMPLE_ID, "status": "hanging_up"}
    ]})  # fmt: skip

    call_id: str
    status: Literal["hanging_up"]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


_NOT_FOUND = {404: _error("no such call")}
_TEXT_EXAMPLE = (
    "[00:00.3] bot: Bright Smile Dental, how can I help?\n"
    "[00:03.2] caller: When are you open on Saturday?\n"
    "[00:05.6] bot: On Saturday we are open [interrupted]\n"
)


# -- the routes ---------------------------------------------------------------------------------
def calls_router(state: GatewayLike) -> APIRouter:
    """The `/v1/calls` routes over a gateway's records and call manager."""

    authorized = bearer_required(lambda: state.settings.api_token)

    def records() -> tuple[CallRecords, AsyncEngine]:
        current = state.records
        if current is None or current.engine is None:
            raise HTTPException(503, "call records are off (records.enabled) or starting")
        return current, current.engine

    def recording_files(current: CallRecords) -> RecordingFiles:
        # Recordings made before recording was switched off are still served and erased.
        return current.files or RecordingFiles(state.settings.data_dir / "recordings")

    def elsewhere(found: queries.CallState, why: str) -> None:
        """A request that only the call's own gateway can carry out, made to another one:
        409 naming the owner (body and `X-Voicebot-Gateway`), which a load balancer routes
        on (deploy/haproxy/haproxy.cfg)."""
        if found.gateway != state.settings.gateway_name:
            raise HTTPException(
                409, f"gateway {found.gateway} owns this call ({why}): send the request to it,"
                f" behind the load balancer with the header {OWNER_HEADER}: {found.gateway}",
                headers={OWNER_HEADER: found.gateway},
            )  # fmt: skip

    router = APIRouter(
        prefix="/v1/calls", tags=["calls"], dependencies=[Depends(authorized)],
        responses={401: _error("bearer token missing or wrong"),
                   503: _error("call records off or not open yet")},
    )  # fmt: skip

    @router.get(
        "", response_model=CallPage, summary="List calls",
        description="Call summaries, newest first (started_at, then id, descending), one page"
        " at a time: pass `next_cursor` back as `cursor` until it is null. Filters combine.",
        responses={400: _error("bad cursor")},
    )  # fmt: skip
    async def list_calls(
        since: Annotated[datetime | None, Query(description="started at or after (ISO)")] = None,
        until: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
        transport: Annotated[str | None, Query(description="sip, ws, webrtc, ...")] = None,
        direction: Annotated[str | None, Query(description="inbound | outbound")] = None,
        end_reason: Annotated[str | None, Query(description="e.g. caller_hangup")] = None,
        status: Annotated[Status | None, Query(description="live: not ended yet")] = None,
        q: Annotated[str | None, Query(max_length=200, description="words in any turn's text,"
                                       " case-insensitive")] = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = queries.DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(description="the previous page's next_cursor")] = None,
) -> dict[str, Any]:  # fmt: skip
        where = CallFilter(since=since, until=until, transport=transport, direction=direction,
                           end_reason=end_reason, status=status, q=q)  # fmt: skip
        try:
            _, engine = records()
            page, next_cursor = await queries.list_calls(engine, where, limit=limit, cursor=cursor)
        except CursorError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"calls": page, "next_cursor": next_cursor}

    @router.get(
        "/{call_id:path}/recording", response_class=FileResponse, summary="A call's recording",
        description="The call's audio as a WAV file: 16 kHz 16-bit stereo, the caller on the"
        " left channel, the bot (what the caller heard) on the right. Byte ranges are served"
        " (`Range: bytes=...` gives 206 Partial Content; 416 if past the end).",
        responses={
            200: {"content": {"audio/wav": {}}, "description": "the whole file"},
            206: {"content": {"audio/wav": {}}, "description": "the requested range"},
            404: _error("no such call, or it has no recording"),
            409: _error("the call is still live (its recording is complete when it ends), or"
                        " its recording is on another gateway's disk (named in"
                        " X-Voicebot-Gateway)"),
            416: {"description": "range not satisfiable"},
        },
    )  # fmt: skip
    async def get_recording(call_id: str) -> FileResponse:
        current, engine = records()
        found = await queries.call_state(engine, call_id)
        if found is None:
            raise HTTPException(404, "no such call")
        if not found.ended:
            raise HTTPException(409, "the call is still live: its recording is complete when it"
                                     " ends")  # fmt: skip
        if not found.recording_path:
            raise HTTPException(404, "this call has no recording")
        try:
            path = recording_files(current).path(found.recording_path)
        except ValueError:
            raise HTTPException(404, "this call's recording is outside the recordings") from None
        if not path.is_file():
            elsewhere(found, "its recording is on that gateway's disk")
            raise HTTPException(404, "this call's recording file is gone")
        return FileResponse(path, media_type="audio/wav", filename=path.name,
                            content_disposition_type="inline")  # fmt: skip

    @router.get(
        "/{call_id:path}/transcript", response_model=TranscriptOut, summary="A call's transcript",
        description="The turns in order as JSON, or with `format=text` as lines"
        " `[mm:ss.d] caller: ...` / `[mm:ss.d] bot: ...` where a bot line is what the caller"
        " heard, ending in ` [interrupted]` when the caller cut it off.",
        responses={200: {"content": {"text/plain": {"example": _TEXT_EXAMPLE}}}, **_NOT_FOUND},
    )  # fmt: skip
    async def get_transcript(
        call_id: str,
        format: Annotated[Format, Query(description="json, or text for text/plain")] = "json",
    ) -> Any:
        _, engine = records()
        turns = await queries.get_turns(engine, call_id)
        if turns is None:
            raise HTTPException(404, "no such call")
        if format == "text":
            return PlainTextResponse(queries.transcript_text(turns))
        return {"call_id": call_id, "turns": turns}

    @router.get(
        "/{call_id:path}", response_model=CallDetail, response_model_exclude_unset=True,
        summary="One call", description="The call's summary with `info`, its `turns` and its"
        " `events` (the event log, without VAD levels; `events=false` leaves them out).",
        responses=_NOT_FOUND,
    )  # fmt: skip
    async def get_call(
        call_id: str, events: Annotated[bool, Query(description="include the event log")] = True
    ) -> dict[str, Any]:
        _, engine = records()
        call = await queries.get_call(engine, call_id, with_events=events)
        if call is None:
            raise HTTPException(404, "no such call")
        return call

    @router.delete(
        "/{call_id:path}", status_code=204, summary="Hang up or erase a call",
        description="A call running on this gateway is hung up (202; its record ends with"
        f" `{HANGUP_REASON}`; an outbound call still ringing is CANCELled: `cancelled`). An"
        " ended call is erased: its record, turns, events, webhooks not yet delivered and its"
        " recording (204).",
        responses={
            202: {"model": HangupOut, "description": "the live call is being hung up"},
            204: {"description": "the call's record and recording are erased"},
            404: _error("no such call"),
            409: _error("the call is live on another gateway or its recording is on another"
                        " gateway's disk (that gateway is named in X-Voicebot-Gateway), or its"
                        " record is still closing"),
        },
    )  # fmt: skip
    async def delete_call(call_id: str) -> Response:
        manager = state.manager
        if manager is not None and manager.hangup(call_id, HANGUP_REASON):
            body = HangupOut(call_id=call_id, status="hanging_up")
            return Response(body.model_dump_json(), status_code=202,
                            media_type="application/json")  # fmt: skip
        current, engine = records()
        found = await queries.call_state(engine, call_id)
        if found is None:
            raise HTTPException(404, "no such call")
        if not found.ended:
            elsewhere(found, "the call is live there")
            raise HTTPException(409, f"the call's record (gateway {found.gateway}) is still"
                                     " open but the call is not running: it is closing, retry")
        files = recording_files(current) if found.recording_path else None
        if files is not None and not _is_file(files, found.recording_path):
            # Erasing the record here would leave the recording on the owner's disk.
            elsewhere(found, "its recording is on that gateway's disk")
        if not await erase_call(engine, files, call_id):
            raise HTTPException(404, "no such call")
        return Response(status_code=204)

    return router


def _is_file(files: RecordingFiles, name: str | None) -> bool:
    try:
        return name is not None and files.path(name).is_file()
    except ValueError:
        return False
