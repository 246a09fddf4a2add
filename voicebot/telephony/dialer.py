"""The SIP leg's dialler: `POST /v1/calls` (through `calls.outbound.OutboundCalls`)
lands here, is admitted like an inbound call, and runs as an `OutboundSipCall` task.
"""

from __future__ import annotations

import asyncio
import logging

from voicebot.calls.leg import admit_leg, run_admitted_leg
from voicebot.calls.outbound import OutboundRequest
from voicebot.telephony.call import SipCallHost
from voicebot.telephony.outbound import OutboundSipCall

log = logging.getLogger("voicebot.telephony.sip")


class SipDialer:
    """The SIP leg's `calls.outbound.Dialer`: admission, then the call as a task."""

    transport = "sip"

    def __init__(self, gateway: SipCallHost) -> None:
        self.gateway = gateway
        self.calls: dict[str, OutboundSipCall] = {}

    def outbound_count(self) -> int:
        return len(self.calls)

    def dial(self, request: OutboundRequest) -> str:
        gateway = self.gateway
        call = OutboundSipCall(gateway, request)  # ValueError: a target we cannot dial
        call_id = admit_leg(gateway.manager, call)  # CallRefusedError: the API says 503
        gateway.calls[call.sip_call_id] = call
        self.calls[call_id] = call
        gateway.manager.on_abort(call_id, call.abort)
        gateway.manager.open_record(
            call_id, "sip", {"from": call.invite.get("From"), "to": call.invite.get("To"),
                             "sip_call_id": call.sip_call_id, "direction": "outbound"},
            direction="outbound", variables=dict(request.variables),
            webhook_url=request.webhook_url,
        )  # fmt: skip
        log.info("call %s: dialling %s", call_id, call.target)

        async def run() -> str | None:
            try:
                return await run_admitted_leg(gateway.manager, call, call_id)
            finally:
                self.calls.pop(call_id, None)
                outcome = "answered" if call.answered else (call.outcome or "failed")
                gateway.manager.metrics.outbound_calls.labels(outcome).inc()

        call.task = asyncio.get_running_loop().create_task(run(), name=f"dial-{call_id}")
        return call_id
