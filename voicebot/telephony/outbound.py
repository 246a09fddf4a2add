"""Calls the bot places over SIP: the UAC side of RFC 3261 (sections 8.1, 12.1.2, 13.2, 22).

Place in the flow: `SipDialer.dial` (telephony/dialer.py; called by
`calls.outbound.OutboundCalls` for `POST /v1/calls`) admits the call like an inbound one and
runs an `OutboundSipCall` through the shared `Leg` lifecycle. Its `open` is the dial: the
INVITE carries our SDP offer; 100, 180 and 183 are progress (a 183's early media is ignored,
or with `early_media = "pass"` the call is connected to the bot from the 183's answer on,
e.g. to hear a callee's IVR); 401/407 are answered once with digest credentials (section
22.2-22.3); a 2xx is ACKed (section 13.2.2.4) and the call runs like an inbound one; any
other final, the ring timeout (CANCEL, section 9.1), an API hang-up before answer, or no
response at all (timer B) ends it with its outcome (`calls.outbound.OUTCOMES`) in the
record. After the answer the dialog is ours as UAC: local = From, remote = the 2xx's To tag,
remote target = its Contact, route set = its Record-Route reversed (section 12.1.2).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from voicebot.agent.session import CallSession
from voicebot.audio.denoise import make_suppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.calls.leg import LegSetupError
from voicebot.calls.manager import LegMedia
from voicebot.calls.outbound import OutboundRequest, outcome_of_status
from voicebot.telephony.call import DialogState, SipCall, SipCallHost
from voicebot.telephony.invite_client import InviteTransaction
from voicebot.telephony.message import (
    SipRequest,
    SipResponse,
    host_port_of,
    new_tag,
    tag_of,
    uri_of,
)
from voicebot.telephony.register import digest_authorization, parse_challenge
from voicebot.telephony.rtp import RtpSession
from voicebot.telephony.sdp import (
    OFFER_TELEPHONE_EVENT_PT,
    PCMU,
    SdpError,
    build_offer,
    choose_codec,
    parse_offer,
)
from voicebot.telephony.sip_targets import check_caller_id, host_hostport, target_uri
from voicebot.telephony.ua import ALLOW_HEADER, new_branch

log = logging.getLogger("voicebot.telephony.sip")

class OutboundSipCall(SipCall):
    """One call the bot places; a `SipCall` whose dialog it created as UAC."""

    direction = "outbound"

    def __init__(self, gateway: SipCallHost, request: OutboundRequest) -> None:
        outbound = gateway.settings.outbound
        trunk = request.trunk
        self.request = request
        self.proxy = trunk.proxy or outbound.proxy
        self.username = trunk.username or outbound.username
        self.password = trunk.password or outbound.password
        domain = outbound.domain or (host_hostport(self.proxy) if self.proxy else None)
        self.target = target_uri(request.to, domain)
        self.next_hop_addr = host_port_of(self.proxy or self.target)
        caller = request.caller_id or outbound.caller_id or self.username or "voicebot"
        check_caller_id(caller)
        self.ring_timeout_s = request.ring_timeout_s or outbound.ring_timeout_s
        self.early_media = request.early_media or outbound.early_media
        local_tag = new_tag()
        from_host = domain or gateway.address
        invite = SipRequest(method="INVITE", uri=self.target)
        invite.add("From", f"<sip:{caller}@{from_host}>;tag={local_tag}")
        invite.add("To", f"<{self.target}>")
        invite.add("Call-ID", f"{secrets.token_hex(12)}@{gateway.address}")
        super().__init__(gateway, invite, self.next_hop_addr)
        self.local_tag = local_tag
        self.remote_tag: str | None = None
        self.remote_to = ""
        self.remote_target = self.target
        self.route_set: list[str] = []
        self.outcome: str | None = None
        self.final_status: int | None = None
        self._tx: InviteTransaction | None = None
        self._earlier_txs: dict[str, InviteTransaction] = {}  # challenged INVITEs, by branch
        self._ring_deadline = 0.0
        self._answer_sends = False  # the SDP answer lets us send (not on hold, a port)
        self._auth: tuple[str, str] | None = None  # the credentials header the INVITE carried
        self._answer_ack: SipRequest | None = None
        self._aborted = asyncio.Event()
        self._connected_early = False

    @property
    def answered(self) -> bool:
        """The callee answered (2xx), or the call connected on early media."""
        return self._answer_ack is not None or self._connected_early

    # -- Leg ----------------------------------------------------------------------------------
    def admit(self) -> None:
        super().admit()  # the media clock's rule applies to calls we place too

    async def open(self, call_id: str) -> LegMedia:
        gateway = self.gateway
        try:
            self.rtp = await gateway.ports.open(
                gateway.settings.sip.bind,
                lambda: RtpSession(PCMU, OFFER_TELEPHONE_EVENT_PT, ("0.0.0.0", 0), self.dtmf),
            )
        except OSError as exc:
            raise LegSetupError(f"no RTP port: {exc}", "failed") from exc
        self.rtp.send_enabled = False  # nothing to send to until the answer says where
        gateway.endpoint.watch_invites(self.sip_call_id, self._on_invite_response)
        self.state = DialogState.EARLY  # for the dispatch: a dialog may form any moment
        await self._dial()
        sip = gateway.settings.sip
        self.echo_canceller = EchoCanceller() if sip.echo_cancellation else None
        info: dict[str, object] = {
            "from": self.invite.get("From"), "to": self.remote_to or self.invite.get("To"),
            "sip_call_id": self.sip_call_id, "direction": "outbound",
            "early_media": self._connected_early,
        }  # fmt: skip
        request = self.request
        overrides = {k: v for k, v in (("greeting", request.greeting),
                                       ("system_prompt", request.system_prompt)) if v}  # fmt: skip
        return LegMedia(
            self.rtp, control=self, info=info, echo_canceller=self.echo_canceller,
            denoiser=make_suppressor(sip.noise_suppression),
            variables=dict(request.variables), prompt_overrides=overrides,
        )  # fmt: skip

    async def close(self, reason: str | None) -> None:
        try:
            tx = self._tx
            if self.state is DialogState.EARLY and tx is not None and tx.final is None:
                if tx.provisional:  # torn down before the answer: stop the ringing
                    await self._cancel(tx)
            elif self.state is DialogState.CONFIRMED:
                await self._send_bye()
        finally:
            if self._tx is not None:
                self._tx.stop()
            self.gateway.endpoint.unwatch_invites(self.sip_call_id)
            self.stop_media()
            self.gateway.forget(self)

    def abort(self) -> None:
        """Hang up before the answer (the API's DELETE): CANCEL, outcome `cancelled`."""
        self._aborted.set()

    def cancel(self) -> bool:
        return False  # a CANCEL is for the INVITE's sender's peer: we sent this INVITE

    # -- the dial -------------------------------------------------------------------------------
    def _new_invite(self) -> SipRequest:
        """The INVITE as sent (again, after a challenge: new branch and CSeq, section
        8.1.3.5), with our offer."""
        assert self.rtp is not None
        gateway, base = self.gateway, self.invite
        invite = SipRequest(method="INVITE", uri=self.target)
        invite.add("Via", self._via())
        invite.add("Max-Forwards", "70")
        invite.add("From", base.get("From") or "")
        invite.add("To", base.get("To") or "")
        invite.add("Call-ID", base.call_id)
        invite.add("CSeq", f"{self.local_cseq} INVITE")
        invite.add("Contact", gateway.contact)
        invite.add("Allow", ALLOW_HEADER)
        invite.add("User-Agent", gateway.settings.sip.user_agent)
        if self._auth is not None:
            invite.add(*self._auth)
        invite.add("Content-Type", "application/sdp")
        invite.body = build_offer(gateway.address, self.rtp.port).encode()
        return invite

    async def _dial(self) -> None:
        """Until answered (returns) or not (raises LegSetupError with the outcome)."""
        self._ring_deadline = asyncio.get_running_loop().time() + self.ring_timeout_s
        challenged = False
        while True:
            if self._tx is not None:
                self._earlier_txs[self._tx.invite.branch] = self._tx
            self.invite = self._new_invite()
            tx = InviteTransaction(self.gateway.endpoint, self.invite, self.next_hop_addr)
            self._tx = tx
            tx.start()
            while True:
                response = await self._next_response(tx)
                if response is None:
                    continue  # a CANCEL went out: its 487 (or a race's 200) follows
                status = response.status
                if status < 200:
                    if self._early_answer(response):
                        return
                    continue
                if status < 300:
                    self._answered(response)
                    return
                if status in (401, 407) and not challenged and self.password:
                    challenged = True
                    self._auth = self._credentials(response)
                    self.local_cseq += 1
                    break  # the same INVITE again, with credentials
                self._failed(response)

    def _failed(self, response: SipResponse) -> None:
        """A final non-2xx: the call's outcome (ours if we CANCELled)."""
        status = response.status
        self.final_status = status
        outcome = self.outcome or outcome_of_status(status)
        if status in (401, 407):
            outcome = "auth_failed"
        self.outcome = outcome
        self.state = DialogState.TERMINATED
        raise LegSetupError(f"{status} {response.reason} to our INVITE", outcome)

    async def run(self, session: CallSession) -> str:
        if not self._connected_early:
            return await super().run(session)
        # Connected on early media: the INVITE's final response is still to come.
        final = asyncio.get_running_loop().create_task(self._final_after_early(session))
        try:
            return await super().run(session)
        finally:
            final.cancel()

    async def _final_after_early(self, session: CallSession) -> None:
        assert self._tx is not None
        try:
            while True:
                response = await self._next_response(self._tx)
                if response is None or response.status < 200:
                    continue
                if response.status < 300:
                    self._answered(response)
                    return
                self._failed(response)
        except LegSetupError as exc:
            log.info("call %s: ended before the answer: %s", self.sip_call_id, exc)
            session.end(exc.outcome or "failed")

    async def _next_response(self, tx: InviteTransaction) -> SipResponse | None:
        """The next response; on the ring timeout or an abort, CANCEL (once) and None."""
        loop = asyncio.get_running_loop()
        while True:
            timeout = self._ring_deadline - loop.time() if self.outcome is None else 10.0
            get = asyncio.ensure_future(tx.responses.get())
            waits = {get}
            if self.outcome is None:  # once CANCELled, only the final response is awaited
                waits.add(asyncio.ensure_future(self._aborted.wait()))
            done, pending = await asyncio.wait(waits, timeout=max(0.0, timeout),
                                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            for waiting in pending - {get}:
                waiting.cancel()
            if get in done:
                response = get.result()
                if response is None:  # timer B: no response at all
                    self.state = DialogState.TERMINATED
                    raise LegSetupError("no response to our INVITE", self.outcome or "unreachable")
                return response
            get.cancel()
            if self.outcome is not None:  # CANCELled and no final within 10 s
                self.state = DialogState.TERMINATED
                raise LegSetupError("no final response after CANCEL", self.outcome)
            self.outcome = "cancelled" if self._aborted.is_set() else "no_answer"
            if not tx.provisional:  # section 9.1: no CANCEL before a provisional response
                if self.outcome == "no_answer":
                    self.outcome = "unreachable"  # nothing answered at all, not even 100
                tx.stop()
                self.state = DialogState.TERMINATED
                raise LegSetupError(f"{self.outcome} before any provisional response",
                                    self.outcome)  # fmt: skip
            await self._cancel(tx)
            return None

    async def _cancel(self, tx: InviteTransaction) -> None:
        log.info("call %s: CANCEL (%s)", self.sip_call_id, self.outcome or "hang-up")
        await tx.cancel()

    def _credentials(self, response: SipResponse) -> tuple[str, str]:
        """Section 22.2 (401: WWW-Authenticate -> Authorization) and 22.3 (407:
        Proxy-Authenticate -> Proxy-Authorization)."""
        proxy = response.status == 407
        header = response.get("Proxy-Authenticate" if proxy else "WWW-Authenticate") or ""
        try:
            challenge = parse_challenge(header)
            value = digest_authorization(challenge, "INVITE", self.target,
                                         self.username or "", self.password or "")  # fmt: skip
        except ValueError as exc:
            self.state = DialogState.TERMINATED
            raise LegSetupError(f"digest challenge: {exc}", "auth_failed") from exc
        return ("Proxy-Authorization" if proxy else "Authorization", value)

    def _early_answer(self, response: SipResponse) -> bool:
        """A 183 (or 180) with SDP: the answer comes early (RFC 3261 13.2.1 allows it in a
        reliable provisional; non-reliable ones repeat it in the 2xx). With early media
        passed, the call connects here; else only the media address is taken."""
        if not response.body or "application/sdp" not in (response.get("Content-Type") or ""):
            return False
        try:
            self._take_sdp_answer(response.body.decode("utf-8", errors="replace"))
        except LegSetupError:
            return False  # a broken early SDP: the 2xx's answer decides
        assert self.rtp is not None
        self.rtp.send_enabled = False  # the bot does not talk into early media: only hears
        if self.early_media != "pass":
            return False
        self._dialog_from(response)
        self._connected_early = True
        # The final response still comes: a 2xx is ACKed, a failure ends the call.
        return True

    def _answered(self, response: SipResponse) -> None:
        self._dialog_from(response)
        body = response.body.decode("utf-8", errors="replace") if response.body else ""
        try:
            if body:
                self._take_sdp_answer(body)
            elif not self._has_remote_media():
                raise LegSetupError("2xx without an SDP answer", "failed")
        except LegSetupError:
            self._send_ack(response)  # section 13.2.2.4: a 2xx is ACKed even if unusable,
            self.state = DialogState.CONFIRMED  # then the dialog is ended with a BYE
            self.outcome = "failed"
            raise
        assert self.rtp is not None
        self.rtp.send_enabled = self._answer_sends  # an early answer was only heard so far
        self._send_ack(response)
        self.state = DialogState.CONFIRMED

    def _has_remote_media(self) -> bool:
        return self.rtp is not None and self.rtp.remote[1] != 0

    def _take_sdp_answer(self, sdp: str) -> None:
        assert self.rtp is not None
        try:
            answer = parse_offer(sdp)
            self.rtp.set_codec(choose_codec(answer), answer.telephone_event_pt)
            self.rtp.set_ptime(answer.send_ptime)
        except (SdpError, ValueError) as exc:
            raise LegSetupError(f"SDP answer: {exc}", "failed") from exc
        self.rtp.relatch((answer.address, answer.port))
        self._answer_sends = not answer.on_hold and answer.port != 0
        self.rtp.send_enabled = self._answer_sends

    def _dialog_from(self, response: SipResponse) -> None:
        """Section 12.1.2: the dialog's remote tag, target and route set, from the response
        that created it."""
        self.remote_to = response.get("To") or self.invite.get("To") or ""
        self.remote_tag = tag_of(self.remote_to)
        self.remote_target = uri_of(response.get("Contact") or "") or self.target
        routes = [part.strip() for value in response.get_all("Record-Route")
                  for part in value.split(",")]  # fmt: skip
        self.route_set = list(reversed(routes))

    def _on_invite_response(self, response: SipResponse) -> None:
        tx = self._tx
        if tx is not None and response.branch != tx.invite.branch:
            tx = self._earlier_txs.get(response.branch)  # a retransmitted 401/407
        if tx is not None and (tx.final is None or response.status >= 300):
            tx.on_response(response)  # a retransmitted failure is ACKed again
            return
        # A 2xx retransmission (our ACK was lost): the same ACK again (13.2.2.4).
        ack = self._answer_ack
        if 200 <= response.status < 300 and ack is not None \
                and tag_of(response.get("To") or "") == self.remote_tag:  # fmt: skip
            self.gateway.endpoint.send(ack, self._next_hop(ack))

    def _send_ack(self, response: SipResponse) -> None:
        """Section 13.2.2.4: the ACK to a 2xx, a transaction of its own, to the remote
        target along the route set, with the INVITE's CSeq number and credentials."""
        ack = self._dialog_request("ACK", cseq=self.invite.cseq[0])
        if self._auth is not None:
            ack.add(*self._auth)
        self._answer_ack = ack
        self.gateway.endpoint.send(ack, self._next_hop(ack))
        if self.state is not DialogState.CONFIRMED:
            log.info("call %s answered (%d)", self.sip_call_id, response.status)

    # -- the dialog, as UAC -----------------------------------------------------------------------
    def in_dialog(self, request: SipRequest) -> bool:
        """Section 12.2.2, from the UAC side: the request's To tag is ours, its From tag
        the callee's."""
        return (
            self.remote_tag is not None
            and tag_of(request.get("To") or "") == self.local_tag
            and tag_of(request.get("From") or "") == self.remote_tag
        )

    def _local_uri(self) -> str:
        return uri_of(self.invite.get("From") or "")

    def _in_dialog_request(self, method: str) -> SipRequest:
        self.local_cseq += 1
        return self._dialog_request(method, cseq=self.local_cseq)

    def _dialog_request(self, method: str, *, cseq: int) -> SipRequest:
        """Section 12.2.1.1 as UAC: From ours, To the callee's with its tag."""
        gateway = self.gateway
        request = SipRequest(method=method, uri=self.remote_target)
        for route in self.route_set:
            request.add("Route", route)
        request.add("Via", self._via())
        request.add("Max-Forwards", "70")
        request.add("From", self.invite.get("From") or "")
        request.add("To", self.remote_to)
        request.add("Call-ID", self.sip_call_id)
        request.add("CSeq", f"{cseq} {method}")
        request.add("Contact", gateway.contact)
        request.add("User-Agent", gateway.settings.sip.user_agent)
        return request

    def _via(self) -> str:
        gateway = self.gateway
        return f"SIP/2.0/UDP {gateway.address}:{gateway.port};branch={new_branch()};rport"

    def _next_hop(self, request: SipRequest) -> tuple[str, int]:
        """The first Route (loose routing, section 16.12), else the outbound proxy, else
        the remote target itself."""
        routes = request.get_all("Route")
        if routes:
            return host_port_of(uri_of(routes[0]))
        return self.next_hop_addr if self.proxy else host_port_of(self.remote_target)
