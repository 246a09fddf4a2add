"""The INVITE client transaction (RFC 3261 section 17.1.1) for calls the bot places.

Place in the flow: an outbound call (`telephony/outbound.py`) sends its INVITE through an
`InviteTransaction`, which retransmits it over UDP (timer A) until a response comes or
timer B runs out, ACKs a non-2xx final itself (section 17.1.1.3: same branch, the
response's To) and hands every response to the call through `responses`. A 2xx is the
call's to ACK (section 13.2.2.4): the ACK is its own transaction, and 2xx retransmissions
keep arriving after this transaction is over, so the call watches its Call-ID for them.
CANCEL (section 9.1) is built here because it must copy the INVITE's branch and headers.
"""

from __future__ import annotations

import asyncio
import contextlib

from voicebot.telephony.message import SipRequest, SipResponse
from voicebot.telephony.ua import T1, T2, TIMEOUT_64T1, SipEndpoint


class InviteTransaction:
    """One INVITE sent until answered; its responses in order on `responses`."""

    def __init__(self, endpoint: SipEndpoint, invite: SipRequest, addr: tuple[str, int]) -> None:
        self.endpoint = endpoint
        self.invite = invite
        self.addr = addr
        self.responses: asyncio.Queue[SipResponse | None] = asyncio.Queue()  # None: timer B
        self.provisional = False  # a 1xx came: CANCEL may be sent (section 9.1)
        self.final: SipResponse | None = None
        self._retransmit: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.endpoint.send(self.invite, self.addr)
        self._retransmit = asyncio.get_running_loop().create_task(self._timers())

    def stop(self) -> None:
        if self._retransmit is not None:
            self._retransmit.cancel()
            self._retransmit = None

    async def _timers(self) -> None:
        """Timer A doubles the interval (capped at T2 as section 17.1.1.2 allows for
        UDP) until a response; timer B gives up after 64*T1 with none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT_64T1
        interval = T1
        while not self.provisional and self.final is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.responses.put_nowait(None)
                return
            await asyncio.sleep(min(interval, remaining))
            if self.provisional or self.final is not None:
                return
            self.endpoint.send(self.invite, self.addr)
            interval = min(interval * 2, T2)

    def on_response(self, response: SipResponse) -> None:
        """A response to this INVITE (matched by branch and CSeq method by the caller)."""
        if response.status < 200:
            if self.final is None:
                self.provisional = True
                self.responses.put_nowait(response)
            return
        if response.status >= 300:
            self._ack_failure(response)  # retransmitted finals are ACKed again
            if self.final is not None:
                return
        elif self.final is not None:
            return  # a 2xx retransmission: the call's dialog ACKs it, not the transaction
        self.final = response
        self.stop()
        self.responses.put_nowait(response)

    def _ack_failure(self, response: SipResponse) -> None:
        """Section 17.1.1.3: the ACK to a non-2xx final, in this transaction."""
        ack = self._in_transaction("ACK", response.get("To") or self.invite.get("To") or "")
        self.endpoint.send(ack, self.addr)

    def cancel_request(self) -> SipRequest:
        """Section 9.1: CANCEL with the INVITE's Request-URI, Call-ID, To, From, CSeq
        number, Route and its single top Via (so the branch matches)."""
        return self._in_transaction("CANCEL", self.invite.get("To") or "")

    def _in_transaction(self, method: str, to: str) -> SipRequest:
        """A request of this INVITE's transaction (ACK of a failure, CANCEL): the
        INVITE's Request-URI, top Via, Route, From, Call-ID and CSeq number."""
        invite = self.invite
        request = SipRequest(method=method, uri=invite.uri)
        request.add("Via", invite.top_via)
        for route in invite.get_all("Route"):
            request.add("Route", route)
        request.add("Max-Forwards", "70")
        request.add("From", invite.get("From") or "")
        request.add("To", to)
        request.add("Call-ID", invite.call_id)
        request.add("CSeq", f"{invite.cseq[0]} {method}")
        return request

    async def cancel(self, timeout: float = 8.0) -> None:
        """Send CANCEL (once a provisional came; section 9.1) and wait for its 200; the
        INVITE's 487 then arrives on `responses`."""
        with contextlib.suppress(TimeoutError):
            await self.endpoint.request(self.cancel_request(), self.addr, timeout=timeout)
