"""The SIP leg of one gateway process: the socket, request dispatch, and every SIP call.

`SipGateway` is a `calls.service.Service`: the wiring starts it beside the HTTP app with
the same call manager. An INVITE for a new dialog becomes a `SipCall` (`telephony/call.py`)
run by `calls.leg.run_leg` like every other transport; calls the bot places are dialled by
its `SipDialer` (`telephony/dialer.py`); in-dialog requests (BYE, CANCEL,
re-INVITE, INFO, NOTIFY) go to their call. The media of all SIP calls moves on one shared
20 ms clock (`media_clock`); registration to a PBX is its own task (`register`).
"""

from __future__ import annotations

import asyncio
import logging

from voicebot.calls.leg import run_leg
from voicebot.calls.manager import CallManager, Refusal
from voicebot.config import Settings
from voicebot.telephony.call import REFUSALS, SipCall
from voicebot.telephony.dialer import SipDialer
from voicebot.telephony.dtmf import parse_dtmf_relay
from voicebot.telephony.media_clock import SipMediaClock
from voicebot.telephony.media_load import MediaLoad
from voicebot.telephony.message import (
    SipRequest,
    SipResponse,
    new_tag,
    response_to,
    tag_of,
)
from voicebot.telephony.ratelimit import SourceLimiter
from voicebot.telephony.register import Registration
from voicebot.telephony.rtp import PortAllocator, RtpSession
from voicebot.telephony.rules import request_refusal
from voicebot.telephony.ua import ALLOW_HEADER, SipEndpoint

log = logging.getLogger("voicebot.telephony.sip")


class SipGateway:
    """The SIP leg of one gateway process."""

    name = "sip"

    def __init__(self, manager: CallManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings
        sip = settings.sip
        self.address = sip.advertise_address or (sip.bind if sip.bind != "0.0.0.0" else "127.0.0.1")
        self.port = settings.sip_port
        self.ports = PortAllocator(sip.rtp_port_min, sip.rtp_port_max)
        discarded = manager.metrics.sip_discarded
        self.endpoint = SipEndpoint(
            self._on_request, settings.sip_allow,
            on_discarded=lambda kind: discarded.labels(kind).inc(),
            limiter=SourceLimiter(sip.source_rate, sip.source_burst),
        )  # fmt: skip
        self.calls: dict[str, SipCall] = {}
        self.max_calls = sip.max_calls or settings.server.max_calls
        manager.limits["sip"] = self.max_calls
        self.registration: Registration | None = None
        self.media = SipMediaClock(
            manager.vad, on_tick=self._on_media_tick, on_stop=self._on_media_stop
        )
        self.media_load = MediaLoad(sip.overload_late_ratio, tick_budget=sip.tick_budget)
        self.dialer = SipDialer(self)

    def _on_media_tick(self, calls: int, seconds: float, late: bool, skipped: int) -> None:
        m = self.manager.metrics
        m.media_tick_seconds.observe(seconds)
        if calls:
            self.media_load.tick(late, skipped, calls, seconds)
        if skipped:
            m.media_ticks_skipped.inc(skipped)

    def _on_media_stop(self) -> None:
        self.media_load.idle()  # no calls: old ticks say nothing of the next call

    def record_rtp_stats(self, rtp: RtpSession) -> None:
        m = self.manager.metrics
        jitter = rtp.jitter
        m.rtp_packets.labels("sent").inc(rtp.sent)
        m.rtp_packets.labels("received").inc(jitter.received)
        m.rtp_packets.labels("lost").inc(jitter.lost)
        m.rtp_packets.labels("late").inc(jitter.late)
        m.rtp_packets.labels("duplicate").inc(jitter.duplicates)
        m.rtp_late_ticks.inc(rtp.late_ticks)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: self.endpoint, local_addr=(self.settings.sip.bind, self.port)
        )
        self.port = self.endpoint.local_port
        log.info("SIP on udp:%s:%d", self.settings.sip.bind, self.port)
        self.manager.outbound.add(self.dialer)
        if self.settings.sip.register_uri:
            self.registration = Registration(
                self.endpoint, self.settings.sip, self.address, self.port
            )
            self.registration.start()

    async def close(self) -> None:
        self.manager.outbound.remove(self.dialer)
        if self.registration is not None:
            self.registration.close()
        for call in list(self.calls.values()):
            if call.session is not None:
                call.session.end("shutdown")
            elif call.task is not None:
                call.task.cancel()
        tasks = [c.task for c in self.calls.values() if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await self.media.close()
        self.endpoint.close()

    def status(self) -> dict[str, object]:
        return {
            "port": self.port,
            "calls": len(self.calls),
            "registered": self.registration is not None and self.registration.registered,
            "media_late_ratio": round(self.media_load.late_ratio, 4),
        }

    def readiness(self) -> tuple[Refusal, str] | None:
        """Why an INVITE would be refused now (None: it would be taken), by the same rules
        as admission: what OPTIONS tells a dispatcher probing us, and `/readyz`."""
        refusal = self.manager.readiness()
        if refusal is not None:
            return refusal
        calls = self.manager.count("sip")
        if calls >= self.max_calls:
            return Refusal.BUSY, "SIP calls at their limit"
        if not self.media_load.admits(calls + 1) or self.media_load.overloaded:
            return Refusal.MEDIA_OVERLOAD, "media at capacity"
        return None

    @property
    def contact(self) -> str:
        return f"<sip:voicebot@{self.address}:{self.port}>"

    def forget(self, call: SipCall) -> None:
        if self.calls.get(call.sip_call_id) is call:
            del self.calls[call.sip_call_id]

    # -- dispatch ---------------------------------------------------------------------------
    def _on_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        method = request.method
        if method == "ACK":  # its transaction was matched by the endpoint already
            acked = self.calls.get(request.call_id)
            if acked is not None and acked.in_dialog(request):
                acked.ack(request)  # a delayed offer's answer
            return
        refusal = request_refusal(request)
        if refusal is not None:
            self.endpoint.respond(request, refusal, addr)
            return
        call = self.calls.get(request.call_id)
        if method == "CANCEL":
            self._cancel(call, request, addr)
            return
        if tag_of(request.get("To") or "") is None:  # outside any dialog
            if method == "INVITE" and call is None:
                self._new_call(request, addr)
            elif method == "INVITE":
                # Section 8.2.2.2: the same Call-ID on a new transaction without our tag is
                # a merged (forked) copy of an INVITE we already took.
                self.endpoint.respond(request, response_to(request, 482), addr)
            elif method == "OPTIONS":  # a keep-alive, or a dispatcher's probe
                self.endpoint.respond(request, self._options_reply(request), addr)
            else:
                self.endpoint.respond(request, response_to(request, 481), addr)
            return
        if call is None or not call.in_dialog(request):
            # Section 12.2.2: the tags must match the dialog's, not just the Call-ID.
            self.endpoint.respond(request, response_to(request, 481), addr)
            return
        if method == "INVITE":
            call.reinvite(request, addr)
        elif method == "BYE":
            self.endpoint.respond(request, response_to(request, 200), addr)
            self.endpoint.stop_retransmitting(call.sip_call_id)
            call.caller_hung_up()
        elif method == "INFO":
            digit = None
            if "dtmf-relay" in (request.get("Content-Type") or "").lower():
                digit = parse_dtmf_relay(request.body)
            self.endpoint.respond(request, response_to(request, 200), addr)
            if digit:
                call.dtmf(digit)
        elif method == "NOTIFY":
            self.endpoint.respond(request, response_to(request, 200), addr)
            call.notify.put_nowait(request.body.decode(errors="replace").strip())
        else:  # OPTIONS inside the dialog
            self.endpoint.respond(request, self._options_ok(request), addr)

    def _options_reply(self, request: SipRequest) -> SipResponse:
        """200 while calls are taken; 503 + Retry-After while draining, full or overloaded
        (RFC 3261 section 11.2: OPTIONS answers as an INVITE would), so that a dispatcher
        (Kamailio's `ds_probing_mode`) stops sending calls here before any is refused."""
        refusal = self.readiness()
        if refusal is None:
            return self._options_ok(request)
        kind, why = refusal
        _, _, retry_after = REFUSALS[kind]  # 503 even when an INVITE would get 486: to a
        # dispatcher any non-200 means "not now", and 503 is what RFC 3263 failover reads
        response = response_to(request, 503, f"Service Unavailable ({why})", to_tag=new_tag())
        response.add("Retry-After", str(retry_after))
        response.add("Allow", ALLOW_HEADER)
        return response

    def _options_ok(self, request: SipRequest) -> SipResponse:
        ok = response_to(request, 200, to_tag=new_tag())
        ok.add("Allow", ALLOW_HEADER)
        ok.add("Accept", "application/sdp, application/dtmf-relay")
        ok.add("Server", self.settings.sip.user_agent)
        return ok

    def _new_call(self, invite: SipRequest, addr: tuple[str, int]) -> None:
        # Known from the first datagram on, so a CANCEL right behind the INVITE finds it.
        call = SipCall(self, invite, addr)
        self.calls[invite.call_id] = call
        call.task = asyncio.create_task(run_leg(self.manager, call))

    def _cancel(self, call: SipCall | None, cancel: SipRequest, addr: tuple[str, int]) -> None:
        # Section 9.2: CANCEL matches the INVITE by Call-ID, branch and CSeq number.
        if call is None or call.invite.branch != cancel.branch:
            self.endpoint.respond(cancel, response_to(cancel, 481), addr)
            return
        # Section 9.2: the 200 to CANCEL carries the To tag of the INVITE's responses.
        self.endpoint.respond(cancel, response_to(cancel, 200, to_tag=call.local_tag), addr)
        call.cancel()
