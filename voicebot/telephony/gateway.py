"""SIP calls into the shared agent: dialogs, their RTP sessions and call control.

`SipGateway` owns the SIP socket and every SIP call of the process. An INVITE that passes
the checks (allow-list, capacity, SDP with a common codec, a free RTP port) becomes a
`SipCall`: it rings for `answer_delay_ms`, answers 200 OK with our SDP, and runs one
CallSession, driven with every other SIP call by one shared 20 ms media clock
(`media_clock`). The bot's hang-up is a BYE; a transfer is a REFER (RFC 3515) to the
configured target, then a BYE once the REFER is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field

from voicebot.audio.denoise import make_suppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.config import Settings
from voicebot.gateway.calls import CallHandle, CallManager, CallRefusedError
from voicebot.telephony.dtmf import parse_dtmf_relay
from voicebot.telephony.media_clock import MediaLoad, SipMediaClock
from voicebot.telephony.message import (
    SipRequest,
    host_port_of,
    response_to,
    tag_of,
    uri_of,
)
from voicebot.telephony.rtp import PortAllocator, RtpSession
from voicebot.telephony.sdp import SdpError, build_answer, choose_codec, parse_offer
from voicebot.telephony.ua import ALLOW_HEADER, KNOWN_METHODS, SipEndpoint, new_branch, new_tag

log = logging.getLogger("voicebot.telephony.sip")


@dataclass(eq=False)
class SipCall:
    gateway: SipGateway
    invite: SipRequest
    source: tuple[str, int]
    local_tag: str
    rtp: RtpSession
    handle: CallHandle | None = None
    answered: bool = False
    cancelled: bool = False
    ended: bool = False
    local_cseq: int = 1
    task: asyncio.Task[None] | None = None
    notify: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    @property
    def remote_tag(self) -> str | None:
        return tag_of(self.invite.get("From") or "")

    # -- CallControl --------------------------------------------------------------------------
    async def hangup(self) -> None:
        await self._send_bye()

    async def transfer(self, target: str) -> None:
        """Blind transfer: REFER the caller to `target`, then leave the call."""
        refer = self._in_dialog_request("REFER")
        refer.add("Refer-To", f"<{target}>")
        refer.add("Referred-By", f"<{self._local_uri()}>")
        response = await self.gateway.endpoint.request(refer, self._next_hop(refer), timeout=8.0)
        if response.status >= 300:
            raise RuntimeError(f"REFER refused: {response.status} {response.reason}")
        # The transferee reports progress in NOTIFY sipfrags (RFC 3515 section 2.4.5);
        # a final one, or a short wait, and we hang up our leg.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while True:
                    frag = await self.notify.get()
                    if re.match(r"SIP/2\.0 [2-6]\d\d", frag):
                        break
        await self._send_bye()

    # -- dialog helpers ---------------------------------------------------------------------------
    def _local_uri(self) -> str:
        return uri_of(self.invite.get("To") or "") or f"sip:voicebot@{self.gateway.address}"

    def _in_dialog_request(self, method: str) -> SipRequest:
        """A request from us inside the dialog (section 12.2.1.1): From/To swapped."""
        self.local_cseq += 1
        remote_target = uri_of(self.invite.get("Contact") or "") or uri_of(
            self.invite.get("From") or ""
        )
        request = SipRequest(method=method, uri=remote_target)
        # Section 12.1.1: as UAS our route set is the INVITE's Record-Route, in order.
        for route in self.invite.get_all("Record-Route"):
            for part in route.split(","):
                request.add("Route", part.strip())
        request.add(
            "Via",
            f"SIP/2.0/UDP {self.gateway.address}:{self.gateway.port};branch={new_branch()};rport",
        )
        request.add("Max-Forwards", "70")
        to_hdr = self.invite.get("To") or ""
        request.add("From", to_hdr if tag_of(to_hdr) else f"{to_hdr};tag={self.local_tag}")
        request.add("To", self.invite.get("From") or "")
        request.add("Call-ID", self.call_id)
        request.add("CSeq", f"{self.local_cseq} {method}")
        request.add("Contact", f"<sip:voicebot@{self.gateway.address}:{self.gateway.port}>")
        request.add("User-Agent", self.gateway.settings.sip.user_agent)
        return request

    def _next_hop(self, request: SipRequest) -> tuple[str, int]:
        """Loose routing (section 16.12): the first Route if any, else where the call came
        from (symmetric signalling also works through NAT)."""
        routes = request.get_all("Route")
        if routes:
            return host_port_of(uri_of(routes[0]))
        return self.source

    async def _send_bye(self) -> None:
        if self.ended:
            return
        self.ended = True
        bye = self._in_dialog_request("BYE")
        try:
            await self.gateway.endpoint.request(bye, self._next_hop(bye), timeout=8.0)
        except TimeoutError:
            log.warning("call %s: no answer to our BYE", self.call_id)

    def stop_media(self) -> None:
        if self.rtp.port in self.gateway.ports.in_use:
            self.gateway.record_rtp_stats(self.rtp)
        self.rtp.close()
        self.gateway.ports.release(self.rtp.port)


class SipGateway:
    """The SIP leg of one gateway process."""

    def __init__(self, manager: CallManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings
        sip = settings.sip
        self.address = sip.advertise_address or (sip.bind if sip.bind != "0.0.0.0" else "127.0.0.1")
        self.port = settings.sip_port
        self.ports = PortAllocator(sip.rtp_port_min, sip.rtp_port_max)
        self.endpoint = SipEndpoint(self._on_request, settings.sip_allow)
        self.calls: dict[str, SipCall] = {}
        self.max_calls = sip.max_calls or settings.server.max_calls
        self.registration: asyncio.Task[None] | None = None
        self.registered = False
        self._setup_tasks: set[asyncio.Task[None]] = set()
        self.media = SipMediaClock(
            manager.vad, on_tick=self._on_media_tick, on_stop=self._on_media_stop
        )
        self.media_load = MediaLoad(sip.overload_late_ratio)

    def _on_media_tick(self, calls: int, seconds: float, late: bool, skipped: int) -> None:
        m = self.manager.metrics
        m.media_tick_seconds.observe(seconds)
        if calls:
            self.media_load.tick(late, skipped)
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
        if self.settings.sip.register_uri:
            from voicebot.telephony.register import keep_registered

            self.registration = asyncio.create_task(keep_registered(self))

    async def close(self) -> None:
        if self.registration is not None:
            self.registration.cancel()
        for call in list(self.calls.values()):
            if call.handle is not None:
                call.handle.session.end("shutdown")
            else:
                call.stop_media()
        tasks = [c.task for c in self.calls.values() if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await self.media.close()
        self.endpoint.close()

    # -- dispatch ---------------------------------------------------------------------------
    def _on_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        method = request.method
        call = self.calls.get(request.call_id)
        if method == "INVITE":
            if call is None and tag_of(request.get("To") or "") is None:
                task = asyncio.create_task(self._new_call(request, addr))
                self._setup_tasks.add(task)
                task.add_done_callback(self._setup_tasks.discard)
            elif call is not None:
                self._reinvite(call, request, addr)
            else:
                self.endpoint.respond(request, response_to(request, 481), addr)
        elif method == "ACK":
            return
        elif method == "OPTIONS":
            ok = response_to(request, 200, to_tag=new_tag())
            ok.add("Allow", ALLOW_HEADER)
            ok.add("Accept", "application/sdp, application/dtmf-relay")
            ok.add("Server", self.settings.sip.user_agent)
            self.endpoint.respond(request, ok, addr)
        elif method == "CANCEL":
            self._cancel(call, request, addr)
        elif method == "BYE":
            if call is None:
                self.endpoint.respond(request, response_to(request, 481), addr)
                return
            self.endpoint.respond(request, response_to(request, 200), addr)
            self.endpoint.stop_retransmitting(call.call_id)
            call.ended = True
            self._end(call, "caller_hangup")
        elif method == "INFO" and call is not None:
            digit = None
            if "dtmf-relay" in (request.get("Content-Type") or "").lower():
                digit = parse_dtmf_relay(request.body)
            self.endpoint.respond(request, response_to(request, 200), addr)
            if digit and call.handle is not None:
                call.handle.session.dtmf(digit)
        elif method == "NOTIFY" and call is not None:
            self.endpoint.respond(request, response_to(request, 200), addr)
            call.notify.put_nowait(request.body.decode(errors="replace").strip())
        elif method in ("INFO", "NOTIFY"):
            self.endpoint.respond(request, response_to(request, 481), addr)
        elif method in KNOWN_METHODS:
            refused = response_to(request, 405)
            refused.add("Allow", ALLOW_HEADER)
            self.endpoint.respond(request, refused, addr)
        else:
            refused = response_to(request, 501)
            refused.add("Allow", ALLOW_HEADER)
            self.endpoint.respond(request, refused, addr)

    def _refuse(self, request: SipRequest, addr: tuple[str, int], status: int, reason: str,
                retry_after: int | None = None) -> None:  # fmt: skip
        response = response_to(request, status, reason, to_tag=new_tag())
        if retry_after is not None:
            response.add("Retry-After", str(retry_after))
        self.endpoint.respond(request, response, addr, reliable=True)

    async def _new_call(self, invite: SipRequest, addr: tuple[str, int]) -> None:
        if self.manager.draining:
            self._refuse(invite, addr, 503, "Service Unavailable (shutting down)", 30)
            return
        if len(self.calls) >= self.max_calls:
            self._refuse(invite, addr, 486, "Busy Here (bot at capacity)", 10)
            return
        try:  # engine backlog, shutdown, the process-wide limit: not only SIP's
            self.manager.admit("sip")
        except CallRefusedError as exc:
            self._refuse(invite, addr, 503, f"Service Unavailable ({exc.reason})", 10)
            return
        if self.media_load.overloaded:
            log.warning(
                "call %s refused: %.1f %% of media ticks late",
                invite.call_id, 100 * self.media_load.late_ratio,
            )  # fmt: skip
            self.manager.metrics.rejected_total.labels("sip", "overload").inc()
            self._refuse(invite, addr, 503, "Service Unavailable (media overloaded)", 5)
            return
        if "application/sdp" not in (invite.get("Content-Type") or "").lower() or not invite.body:
            self._refuse(invite, addr, 488, "Not Acceptable Here (need an SDP offer)")
            return
        try:
            offer = parse_offer(invite.body.decode("utf-8", errors="replace"))
            codec = choose_codec(offer)
        except SdpError as exc:
            if "codec" in str(exc) or "transport" in str(exc):
                self._refuse(invite, addr, 488, f"Not Acceptable Here ({exc})")
            else:
                self._refuse(invite, addr, 400, f"Bad Request ({exc})")
            return
        self.endpoint.respond(invite, response_to(invite, 100), addr)
        local_tag = new_tag()
        holder: dict[str, SipCall] = {}

        def on_dtmf(digit: str) -> None:
            call = holder.get("call")
            if call is not None and call.handle is not None:
                call.handle.session.dtmf(digit)

        try:
            rtp = await self.ports.open(
                self.settings.sip.bind,
                lambda: RtpSession(
                    codec, offer.telephone_event_pt, (offer.address, offer.port), on_dtmf
                ),
            )
        except OSError as exc:
            log.error("call %s: %s", invite.call_id, exc)
            self._refuse(invite, addr, 503, "Service Unavailable (no RTP port)", 10)
            return
        call = SipCall(self, invite, addr, local_tag, rtp)
        holder["call"] = call
        if offer.on_hold:
            rtp.send_enabled = False
        self.calls[invite.call_id] = call
        call.task = asyncio.create_task(self._run(call, offer, codec))

    async def _run(self, call: SipCall, offer, codec: int) -> None:  # type: ignore[no-untyped-def]
        invite, addr = call.invite, call.source
        try:
            ringing = response_to(invite, 180, to_tag=call.local_tag)
            ringing.add("Contact", f"<sip:voicebot@{self.address}:{self.port}>")
            self.endpoint.respond(invite, ringing, addr)
            await asyncio.sleep(self.settings.sip.answer_delay_ms / 1000)
            if call.cancelled:
                return
            try:
                info = {
                    "from": invite.get("From"),
                    "to": invite.get("To"),
                    "sip_call_id": invite.call_id,
                }
                sip = self.settings.sip
                call.handle = self.manager.open(
                    "sip", call.rtp, [], control=call, call_id=f"sip-{invite.call_id}",
                    info=info,
                    echo_canceller=EchoCanceller() if sip.echo_cancellation else None,
                    denoiser=make_suppressor(sip.noise_suppression),
                )  # fmt: skip
            except CallRefusedError as exc:
                self._refuse(invite, addr, 503, f"Service Unavailable ({exc.reason})", 10)
                return
            ok = response_to(invite, 200, to_tag=call.local_tag)
            ok.add("Contact", f"<sip:voicebot@{self.address}:{self.port}>")
            ok.add("Allow", ALLOW_HEADER)
            ok.add("Content-Type", "application/sdp")
            ok.add("Server", self.settings.sip.user_agent)
            ok.body = build_answer(offer, codec, self.address, call.rtp.port).encode()
            self.endpoint.respond(invite, ok, addr, reliable=True)
            call.answered = True
            self.media.add(call.rtp, call.handle.session)
            try:
                reason = await self.manager.run(call.handle)
            finally:
                self.media.remove(call.rtp)
            if reason in ("bot_hangup", "shutdown", "error") and not call.ended:
                await call.hangup()
        except Exception:
            log.exception("SIP call %s failed", invite.call_id)
            if not call.answered:
                self._refuse(invite, addr, 500, "Server Internal Error")
            elif not call.ended:
                with contextlib.suppress(Exception):
                    await call.hangup()
        finally:
            call.stop_media()
            self.calls.pop(invite.call_id, None)

    def _cancel(self, call: SipCall | None, cancel: SipRequest, addr: tuple[str, int]) -> None:
        # Section 9.2: CANCEL matches the INVITE by Call-ID, branch and CSeq number.
        if call is None or call.invite.branch != cancel.branch:
            self.endpoint.respond(cancel, response_to(cancel, 481), addr)
            return
        self.endpoint.respond(cancel, response_to(cancel, 200), addr)
        if call.answered:
            return  # too late: the call is up and must be ended with BYE
        call.cancelled = True
        terminated = response_to(call.invite, 487, to_tag=call.local_tag)
        self.endpoint.respond(call.invite, terminated, call.source, reliable=True)
        if call.task is not None:
            call.task.cancel()
        call.stop_media()
        self.calls.pop(call.call_id, None)

    def _reinvite(self, call: SipCall, request: SipRequest, addr: tuple[str, int]) -> None:
        """Hold / unhold / new media address (RFC 3264 section 8)."""
        try:
            offer = parse_offer(request.body.decode("utf-8", errors="replace"))
            codec = choose_codec(offer)
        except SdpError as exc:
            refusal = response_to(request, 488, f"Not Acceptable Here ({exc})")
            self.endpoint.respond(request, refusal, addr)
            return
        call.rtp.send_enabled = not offer.on_hold and offer.port != 0
        if not offer.on_hold:
            call.rtp.remote = (offer.address, offer.port)
        if call.handle is not None and call.handle.session.echo_canceller is not None:
            call.handle.session.echo_canceller.path_changed()
        ok = response_to(request, 200, to_tag=call.local_tag)
        ok.add("Contact", f"<sip:voicebot@{self.address}:{self.port}>")
        ok.add("Content-Type", "application/sdp")
        ok.body = build_answer(offer, codec, self.address, call.rtp.port).encode()
        self.endpoint.respond(request, ok, addr, reliable=True)

    def _end(self, call: SipCall, reason: str) -> None:
        if call.handle is not None:
            call.handle.session.end(reason)
        elif call.task is not None:
            call.task.cancel()
