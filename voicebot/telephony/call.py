"""One inbound SIP call: its dialog (RFC 3261 sections 12-13), its RTP session, and the
`Leg` that runs it through the shared call lifecycle.

As a leg, `SipCall` answers the INVITE (100 Trying, 180 Ringing with our tag: an early
dialog; after `answer_delay_ms`, 200 OK with the SDP answer: confirmed), lets the shared
media clock step its session, and tears down with a BYE if the dialog is still up when the
call ends. As the session's `CallControl`, hang-up is a BYE and a transfer a REFER
(RFC 3515) with the call's context in its Refer-To (`refer_to.py`), then a BYE once the
transferee reports success; a refusal or a failure report leaves the call up
(`SipCall.transfer`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from enum import Enum
from typing import Protocol

from voicebot.agent.call_actions import TransferFailedError, TransferOutcome
from voicebot.agent.session import CallSession
from voicebot.audio.denoise import make_suppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.calls.leg import Leg, LegSetupError
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia, Refusal
from voicebot.calls.variables import call_variables, select_headers
from voicebot.config import Settings
from voicebot.telephony.media_clock import SipMediaClock
from voicebot.telephony.media_load import MediaLoad
from voicebot.telephony.message import (
    SipRequest,
    host_port_of,
    new_tag,
    response_to,
    tag_of,
    uri_of,
)
from voicebot.telephony.refer_to import refer_to
from voicebot.telephony.rtp import PortAllocator, RtpSession
from voicebot.telephony.sdp import (
    OFFER_TELEPHONE_EVENT_PT,
    PCMU,
    AudioOffer,
    SdpError,
    SdpNotAcceptableError,
    build_answer,
    build_offer,
    choose_codec,
    parse_offer,
)
from voicebot.telephony.ua import ALLOW_HEADER, TIMEOUT_64T1, SipEndpoint, new_branch

log = logging.getLogger("voicebot.telephony.sip")

# Which refusals are "busy" (the bot is full: try another agent) rather than unavailable.
REFUSALS: dict[Refusal, tuple[int, str, int]] = {
    Refusal.SHUTTING_DOWN: (503, "Service Unavailable (shutting down)", 30),
    Refusal.BUSY: (486, "Busy Here (bot at capacity)", 10),
    Refusal.CAPACITY: (503, "Service Unavailable (too many calls)", 10),
    Refusal.ENGINE_BACKLOG: (503, "Service Unavailable (engines overloaded)", 10),
    Refusal.MEDIA_OVERLOAD: (503, "Service Unavailable (media overloaded)", 5),
    Refusal.CPU: (503, "Service Unavailable (CPU at capacity)", 5),
}


class SipCallHost(Protocol):
    """What a call uses of the gateway that owns it (`SipGateway`; no import back)."""

    manager: CallManager
    settings: Settings
    endpoint: SipEndpoint
    ports: PortAllocator
    media: SipMediaClock
    media_load: MediaLoad
    address: str
    port: int
    calls: dict[str, SipCall]

    @property
    def contact(self) -> str: ...

    def forget(self, call: SipCall) -> None: ...

    def record_rtp_stats(self, rtp: RtpSession) -> None: ...


# A sipfrag's status line (RFC 3420; RFC 3515 section 2.4.5: the first line of the NOTIFY body).
_SIPFRAG_STATUS = re.compile(r"SIP/2\.0\s+([1-6]\d\d)\s*([^\r\n]*)")
# Put in `SipCall.notify` when the caller sends BYE while an accepted REFER is pending.
_CALLER_LEFT = "\x00caller left"
# After a failed transfer, how long to wait for the caller's side to take the call off hold.
_RESUME_WAIT_S = 3.0


class DialogState(Enum):
    """Where the INVITE's dialog is (RFC 3261 section 12; section 17.2.1 before it)."""

    TRYING = "trying"  # INVITE taken, no response with our tag yet: no dialog
    EARLY = "early"  # 180 Ringing with our To tag sent (section 12.1.1)
    CONFIRMED = "confirmed"  # 200 OK sent (section 13.3.1.4)
    TERMINATED = "terminated"  # BYE either way, CANCEL answered 487, or a final refusal


class SipCall(Leg):
    transport = "sip"

    def __init__(self, gateway: SipCallHost, invite: SipRequest, source: tuple[str, int]) -> None:
        self.gateway = gateway
        self.invite = invite
        self.source = source
        self.local_tag = new_tag()
        self.state = DialogState.TRYING
        self.local_cseq = 1
        self.rtp: RtpSession | None = None
        self.session: CallSession | None = None
        self.echo_canceller: EchoCanceller | None = None
        self.task: asyncio.Task[str | None] | None = None
        self.notify: asyncio.Queue[str] = asyncio.Queue()  # NOTIFY bodies (sipfrags)
        self._transfer_accepted = False  # from a REFER's 2xx until its outcome is known
        # Only while a delayed offer's 200 OK waits for its ACK: the answer SDP to come.
        self._answer: asyncio.Future[str] | None = None

    @property
    def sip_call_id(self) -> str:
        return self.invite.call_id

    # -- Leg ----------------------------------------------------------------------------------
    @property
    def call_id(self) -> str:
        return f"sip-{self.invite.call_id}"

    def admit(self) -> None:
        gateway = self.gateway
        load = gateway.media_load
        calls = gateway.manager.count("sip") + 1  # with this one
        if not load.admits(calls):
            log.warning("call %s refused: %d calls would take a %.1f ms media tick "
                        "(%.3f ms each)", self.sip_call_id, calls,
                        1000 * load.predicted_tick_s(calls), 1000 * load.per_call_s)  # fmt: skip
            raise CallRefusedError(Refusal.MEDIA_OVERLOAD, "media at capacity")
        if load.overloaded:
            log.warning("call %s refused: %.1f %% of media ticks late",
                        self.sip_call_id, 100 * load.late_ratio)  # fmt: skip
            raise CallRefusedError(Refusal.MEDIA_OVERLOAD, "media overloaded")

    async def refuse(self, refusal: CallRefusedError) -> None:
        status, reason, retry_after = REFUSALS[refusal.kind]
        self._final(status, reason, retry_after)
        self.gateway.forget(self)

    async def open(self, call_id: str) -> LegMedia:
        invite, gateway = self.invite, self.gateway
        offer, codec = self._read_offer()  # offer None: a delayed offer (RFC 3261 13.2.1)
        gateway.endpoint.respond(invite, response_to(invite, 100), self.source)
        te_pt = OFFER_TELEPHONE_EVENT_PT if offer is None else offer.telephone_event_pt
        remote = ("0.0.0.0", 0) if offer is None else (offer.address, offer.port)
        try:
            self.rtp = await gateway.ports.open(
                gateway.settings.sip.bind, lambda: RtpSession(codec, te_pt, remote, self.dtmf)
            )
        except OSError as exc:
            self._final(503, "Service Unavailable (no RTP port)", 10)
            raise LegSetupError(str(exc)) from exc
        if offer is not None:
            self.rtp.set_ptime(offer.send_ptime)  # RFC 3264 6.1: what the caller receives
            if offer.on_hold:
                self.rtp.send_enabled = False
        ringing = response_to(invite, 180, to_tag=self.local_tag)
        ringing.add("Contact", gateway.contact)
        gateway.endpoint.respond(invite, ringing, self.source)
        self.state = DialogState.EARLY
        await asyncio.sleep(gateway.settings.sip.answer_delay_ms / 1000)
        if self.state is DialogState.TERMINATED:  # CANCEL while ringing: 487 already sent
            raise LegSetupError("cancelled while ringing")
        if gateway.manager.draining:  # the shutdown began while it rang: not answered
            self._final(*REFUSALS[Refusal.SHUTTING_DOWN])
            raise LegSetupError("shutting down")
        sip = gateway.settings.sip
        self.echo_canceller = EchoCanceller() if sip.echo_cancellation else None
        ok = response_to(invite, 200, to_tag=self.local_tag)
        ok.add("Contact", gateway.contact)
        ok.add("Allow", ALLOW_HEADER)
        ok.add("Content-Type", "application/sdp")
        ok.add("Server", sip.user_agent)
        if offer is None:
            ok.body = build_offer(gateway.address, self.rtp.port).encode()
            self._answer = asyncio.get_running_loop().create_future()
        else:
            ok.body = build_answer(offer, codec, gateway.address, self.rtp.port).encode()
        gateway.endpoint.respond(invite, ok, self.source, reliable=True)
        self.state = DialogState.CONFIRMED
        if offer is None:
            await self._take_answer()  # on failure, close() ends the dialog with a BYE
        info: dict[str, object] = {
            "from": invite.get("From"), "to": invite.get("To"), "sip_call_id": invite.call_id,
        }  # fmt: skip
        return LegMedia(
            self.rtp, control=self, info=info, echo_canceller=self.echo_canceller,
            denoiser=make_suppressor(sip.noise_suppression),
            variables=call_variables(select_headers(invite.headers, sip.variable_headers)),
        )  # fmt: skip

    async def run(self, session: CallSession) -> str:
        assert self.rtp is not None  # set in open()
        self.session = session
        if self.state is DialogState.TERMINATED:  # BYE raced the start
            session.end("caller_hangup")
        self.gateway.media.add(self.rtp, session)
        try:
            return await session.run_driven()
        finally:
            self.gateway.media.remove(self.rtp)

    async def close(self, reason: str | None) -> None:
        try:
            if self.state in (DialogState.TRYING, DialogState.EARLY):
                if self.gateway.manager.draining:  # ended by the shutdown while ringing
                    self._final(*REFUSALS[Refusal.SHUTTING_DOWN])
                else:  # set-up broke before answering
                    self._final(500, "Server Internal Error")
            elif self.state is DialogState.CONFIRMED:
                await self._send_bye()  # the call ended on our side: the caller is still on
        finally:
            self.stop_media()
            self.gateway.forget(self)

    # -- CallControl --------------------------------------------------------------------------
    async def hangup(self) -> None:
        await self._send_bye()

    async def transfer(self, target: str) -> TransferOutcome:
        """Blind transfer (RFC 3515; RFC 5589 section 6, basic transfer) with context.

        The REFER's Refer-To carries the call id as RFC 7433 User-to-User and the
        `[sip] transfer_headers`, embedded in the target URI (`refer_to.py`). The outcome:
        - the REFER refused (3xx-6xx), or no answer to it (408, RFC 3261 section 8.1.3.1):
          `TransferFailedError`, the call goes on;
        - accepted (2xx, usually 202), then the transferee's NOTIFY sipfrags (RFC 3515
          sections 2.4.4-2.4.5): 1xx (`SIP/2.0 100 Trying`) is progress, waited past; a
          final 2xx is transferred: BYE, our leg ends; a final >= 300 (the target busy,
          486; not answering, 480 / 408; declined, 603) is `TransferFailedError`: the call
          stays up (the transferee takes it back: if it held us, the failure is reported
          once its re-INVITE resumes the call, or after a few seconds) and the bot tells
          the caller;
        - accepted, and then no final report: handed over, unconfirmed (`confirmed=False`,
          status 202). That is when the 2xx says `Refer-Sub: false` (RFC 4488: no NOTIFY
          will come), when the caller's side sends BYE while we wait (it left us for the
          target), or when `[sip] transfer_notify_timeout_s` passes. RFC 3515 lets the
          transferor end its dialog at any point after the REFER is accepted, and a
          caller held with the bot for good is worse than a transfer the record marks
          unconfirmed; so the bot hangs up then.
        """
        if self.state is not DialogState.CONFIRMED:
            raise TransferFailedError(None, "the call is no longer up")
        sip = self.gateway.settings.sip
        refer = self._in_dialog_request("REFER")
        refer.add("Refer-To", refer_to(
            target, self.call_id, sip.transfer_headers, uui=sip.transfer_uui,
            uui_purpose=sip.transfer_uui_purpose,
        ))  # fmt: skip
        refer.add("Referred-By", f"<{self._local_uri()}>")
        while not self.notify.empty():  # a former attempt's late reports are not this one's
            self.notify.get_nowait()
        endpoint = self.gateway.endpoint
        try:
            response = await endpoint.request(refer, self._next_hop(refer), timeout=8.0)
        except TimeoutError as exc:
            raise TransferFailedError(408, "Request Timeout (no answer to the REFER)") from exc
        if response.status >= 300:
            raise TransferFailedError(response.status, response.reason)
        if (response.get("Refer-Sub") or "").strip().lower() == "false":
            await self._send_bye()
            return TransferOutcome(response.status, f"{response.reason} (Refer-Sub: false)",
                                   confirmed=False)  # fmt: skip
        self._transfer_accepted = True
        try:
            outcome = await self._transfer_report(sip.transfer_notify_timeout_s)
        except TransferFailedError:
            await self._off_hold(_RESUME_WAIT_S)
            raise
        finally:
            self._transfer_accepted = False
        await self._send_bye()
        return outcome

    async def _off_hold(self, timeout_s: float) -> None:
        """A transferee that held the call while it tried the target (RFC 3264 section 8.4:
        sendonly / inactive, or port 0) takes it back with a re-INVITE: wait for that, at
        most `timeout_s`, so the bot's next words are heard and not sent into the hold."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (
            self.rtp is not None and not self.rtp.send_enabled
            and self.state is DialogState.CONFIRMED and loop.time() < deadline
        ):  # fmt: skip
            await asyncio.sleep(0.02)

    async def _transfer_report(self, timeout_s: float) -> TransferOutcome:
        """The final NOTIFY sipfrag of an accepted REFER (see `transfer`)."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    frag = await self.notify.get()
                    if frag == _CALLER_LEFT:
                        return TransferOutcome(202, "the caller left the call after the REFER",
                                               confirmed=False)  # fmt: skip
                    match = _SIPFRAG_STATUS.match(frag)
                    if match is None or match.group(1).startswith("1"):
                        continue  # progress (or a body we cannot read): wait on
                    status, reason = int(match.group(1)), match.group(2).strip()
                    if status >= 300:
                        raise TransferFailedError(status, reason)
                    return TransferOutcome(status, reason)
        except TimeoutError:
            return TransferOutcome(202, f"accepted, no final NOTIFY within {timeout_s:g} s",
                                   confirmed=False)  # fmt: skip

    # -- in-dialog requests from the caller ----------------------------------------------------
    def in_dialog(self, request: SipRequest) -> bool:
        """Section 12.2.2: a request is in this dialog only if its To tag is ours and its
        From tag the caller's (the Call-ID alone is no proof: anyone can see or guess it)."""
        return (
            tag_of(request.get("To") or "") == self.local_tag
            and tag_of(request.get("From") or "") == tag_of(self.invite.get("From") or "")
        )

    def dtmf(self, digit: str) -> None:
        """A digit from RFC 4733 events or SIP INFO."""
        if self.session is not None:
            self.session.dtmf(digit)

    def caller_hung_up(self) -> None:
        """BYE from the caller (already answered 200)."""
        self.state = DialogState.TERMINATED
        if self._transfer_accepted:  # it left us for the transfer target: `transfer` ends it
            self.notify.put_nowait(_CALLER_LEFT)
            return
        if self.session is not None:
            self.session.end("caller_hangup")
        elif self.task is not None:
            self.task.cancel()

    def cancel(self) -> bool:
        """CANCEL of the INVITE (section 9.2): 487 unless already answered; False if too
        late (the call is up and must be ended with BYE)."""
        if self.state in (DialogState.CONFIRMED, DialogState.TERMINATED):
            return False
        self.state = DialogState.TERMINATED
        terminated = response_to(self.invite, 487, to_tag=self.local_tag)
        self.gateway.endpoint.respond(self.invite, terminated, self.source, reliable=True)
        if self.task is not None:
            self.task.cancel()
        self.gateway.forget(self)  # a task cancelled before it ran never tears down itself
        return True

    def reinvite(self, request: SipRequest, addr: tuple[str, int]) -> None:
        """Hold / unhold / new media address (RFC 3264 section 8)."""
        endpoint = self.gateway.endpoint
        try:
            offer = parse_offer(request.body.decode("utf-8", errors="replace"))
            codec = choose_codec(offer)
        except SdpError as exc:
            endpoint.respond(request, response_to(request, 488, f"Not Acceptable Here ({exc})"),
                             addr)  # fmt: skip
            return
        if self.rtp is None:  # not answered yet: no media to change
            endpoint.respond(request, response_to(request, 491, "Request Pending"), addr)
            return
        self.rtp.send_enabled = not offer.on_hold and offer.port != 0
        self.rtp.set_ptime(offer.send_ptime)
        if not offer.on_hold:
            self.rtp.relatch((offer.address, offer.port))
        if self.echo_canceller is not None:
            self.echo_canceller.path_changed()
        ok = response_to(request, 200, to_tag=self.local_tag)
        ok.add("Contact", self.gateway.contact)
        ok.add("Content-Type", "application/sdp")
        ok.body = build_answer(offer, codec, self.gateway.address, self.rtp.port).encode()
        endpoint.respond(request, ok, addr, reliable=True)

    # -- helpers -------------------------------------------------------------------------------
    async def _take_answer(self) -> None:
        """A delayed offer's answer, from the ACK to our 200 OK (section 13.3.1.4): the
        codec it chose and where to send; no usable answer ends the call."""
        assert self._answer is not None and self.rtp is not None
        try:
            sdp = await asyncio.wait_for(self._answer, TIMEOUT_64T1)
        except TimeoutError as exc:
            raise LegSetupError("no ACK with the SDP answer") from exc
        try:
            answer = parse_offer(sdp)
            self.rtp.set_codec(choose_codec(answer), answer.telephone_event_pt)
            self.rtp.set_ptime(answer.send_ptime)  # the answer's ptime: what it receives
        except (SdpError, ValueError) as exc:
            raise LegSetupError(f"SDP answer in the ACK: {exc}") from exc
        self.rtp.relatch((answer.address, answer.port))
        self.rtp.send_enabled = not answer.on_hold

    def ack(self, request: SipRequest) -> None:
        """An ACK in this dialog: with a delayed offer, it carries the answer."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(request.body.decode("utf-8", errors="replace"))

    def _read_offer(self) -> tuple[AudioOffer | None, int]:
        invite = self.invite
        if not invite.body:
            return None, PCMU  # the codec is settled by the answer in the ACK
        if "application/sdp" not in (invite.get("Content-Type") or "").lower():
            self._final(488, "Not Acceptable Here (need an SDP offer)")
            raise LegSetupError("no SDP offer")
        try:
            offer = parse_offer(invite.body.decode("utf-8", errors="replace"))
            return offer, choose_codec(offer)
        except SdpError as exc:
            if isinstance(exc, SdpNotAcceptableError):
                self._final(488, f"Not Acceptable Here ({exc})")
            else:
                self._final(400, f"Bad Request ({exc})")
            raise LegSetupError(f"SDP: {exc}") from exc

    def _final(self, status: int, reason: str, retry_after: int | None = None) -> None:
        """A final non-2xx response to the INVITE: the dialog never comes to be."""
        response = response_to(self.invite, status, reason, to_tag=self.local_tag)
        if retry_after is not None:
            response.add("Retry-After", str(retry_after))
        self.gateway.endpoint.respond(self.invite, response, self.source, reliable=True)
        self.state = DialogState.TERMINATED

    def _local_uri(self) -> str:
        return uri_of(self.invite.get("To") or "") or f"sip:voicebot@{self.gateway.address}"

    def _in_dialog_request(self, method: str) -> SipRequest:
        """A request from us inside the dialog (section 12.2.1.1): From/To swapped."""
        self.local_cseq += 1
        invite = self.invite
        remote_target = uri_of(invite.get("Contact") or "") or uri_of(invite.get("From") or "")
        request = SipRequest(method=method, uri=remote_target)
        # Section 12.1.1: as UAS our route set is the INVITE's Record-Route, in order.
        for route in invite.get_all("Record-Route"):
            for part in route.split(","):
                request.add("Route", part.strip())
        gateway = self.gateway
        request.add(
            "Via", f"SIP/2.0/UDP {gateway.address}:{gateway.port};branch={new_branch()};rport"
        )
        request.add("Max-Forwards", "70")
        to_hdr = invite.get("To") or ""
        request.add("From", to_hdr if tag_of(to_hdr) else f"{to_hdr};tag={self.local_tag}")
        request.add("To", invite.get("From") or "")
        request.add("Call-ID", self.sip_call_id)
        request.add("CSeq", f"{self.local_cseq} {method}")
        request.add("Contact", gateway.contact)
        request.add("User-Agent", gateway.settings.sip.user_agent)
        return request

    def _next_hop(self, request: SipRequest) -> tuple[str, int]:
        """Loose routing (section 16.12): the first Route if any, else where the call came
        from (symmetric signalling also works through NAT)."""
        routes = request.get_all("Route")
        if routes:
            return host_port_of(uri_of(routes[0]))
        return self.source

    async def _send_bye(self) -> None:
        if self.state is not DialogState.CONFIRMED:
            return
        self.state = DialogState.TERMINATED
        bye = self._in_dialog_request("BYE")
        try:
            await self.gateway.endpoint.request(bye, self._next_hop(bye), timeout=8.0)
        except TimeoutError:
            log.warning("call %s: no answer to our BYE", self.sip_call_id)

    def stop_media(self) -> None:
        if self.rtp is None:
            return
        rtp, self.rtp = self.rtp, None
        if rtp.port in self.gateway.ports.in_use:
            self.gateway.record_rtp_stats(rtp)
        rtp.close()
        self.gateway.ports.release(rtp.port)
