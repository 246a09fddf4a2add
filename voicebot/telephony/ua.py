"""The SIP user agent on UDP: transactions and dialogs a bot gateway needs (RFC 3261).

Server side: INVITE (100 Trying, 180 Ringing, 200 OK with the SDP answer; re-INVITE for
hold/unhold), ACK, BYE, CANCEL (487 to the INVITE), OPTIONS (trunk keep-alives), INFO
(DTMF relay); other methods get 405 or 501, malformed requests 400, no common codec 488,
no capacity 486/503 with Retry-After, sources outside the allow-list 403. Responses go
back to where the request came from (RFC 3581 rport behaviour), not to a registrar.
Final responses to INVITE are retransmitted until ACK (section 17.2.1 timer G, and
section 13.3.1.4 for 2xx), retransmitted requests get the same response again. New
requests outside a dialog, and the 400s to malformed datagrams, count against their
source's rate limit (`ratelimit.py`: a stateless 503, then silence).
Client side: BYE and REFER inside a dialog, REGISTER with digest auth (`register.py`),
retransmitted over UDP per section 17.1.2 (timer E) until a final response; responses to
the INVITEs of calls the bot places go to their call (`invite_client.py`, `outbound.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from voicebot.telephony.message import (
    REASONS,
    STANDARD_METHODS,
    SipParseError,
    SipRequest,
    SipResponse,
    new_tag,
    parse_message,
    response_to,
    tag_of,
)
from voicebot.telephony.ratelimit import SourceLimiter, Verdict

log = logging.getLogger("voicebot.telephony.sip")

T1 = 0.5  # RFC 3261 section 17.1.1.1: RTT estimate
T2 = 4.0
TIMEOUT_64T1 = 64 * T1
# Refusals (non-2xx finals to INVITE) retransmitted at once to one source address. Each is
# ~11 datagrams over 32 s to whatever address the INVITE claimed: past this many, further
# refusals to that source are sent once (still repeated when the INVITE is), so a spoofed
# INVITE flood cannot make the gateway a traffic amplifier.
MAX_RETRANSMITTING_REFUSALS = 16
ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "NOTIFY")
KNOWN_METHODS = STANDARD_METHODS  # the others get 501, these 405 (section 8.2.1)
ALLOW_HEADER = ", ".join(ALLOWED_METHODS)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)  # RFC 3261 section 8.1.1.7 magic cookie


@dataclass
class ServerTransaction:
    """An INVITE server transaction: its last response, resent on retransmissions."""

    request: SipRequest
    source: tuple[str, int]
    last_response: SipResponse | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    retransmit_task: asyncio.Task[None] | None = None


RequestHandler = Callable[[SipRequest, tuple[str, int]], None]


class PerSourceLog:
    """At most one log line per source address per `interval_s`: bad datagrams are free to
    send, and a line for each would let anyone flood the log. The next line after a quiet
    spell says how many were left out."""

    def __init__(self, interval_s: float = 60.0, max_sources: int = 4096) -> None:
        self.interval_s = interval_s
        self.max_sources = max_sources
        self._last: dict[str, tuple[float, int]] = {}  # ip -> (when logged, left out since)

    def allow(self, ip: str, now: float) -> int | None:
        """None: stay quiet; else log now, mentioning that many lines left out."""
        last = self._last.get(ip)
        if last is not None and now - last[0] < self.interval_s:
            self._last[ip] = (last[0], last[1] + 1)
            return None
        if len(self._last) >= self.max_sources:  # bounded memory under a spoofed flood
            self._last.clear()
        self._last[ip] = (now, 0)
        return last[1] if last is not None else 0


class SipEndpoint(asyncio.DatagramProtocol):
    """The UDP socket: parses datagrams, matches transactions, hands requests on."""

    def __init__(
        self,
        on_request: RequestHandler,
        allow: list[str] | None = None,
        on_discarded: Callable[[str], None] | None = None,
        limiter: SourceLimiter | None = None,
    ) -> None:
        """`on_discarded(kind)` counts datagrams refused before dispatch: "malformed"
        (unparseable), "forbidden" (source outside the allow-list), "rate_limited" (503 to
        a source over its rate, `ratelimit.py`) or "dropped" (over its hard cap too)."""
        self.on_request = on_request
        self.on_discarded = on_discarded
        self.limiter = limiter or SourceLimiter(0, 1)
        self._bad_log = PerSourceLog()
        self._limit_log = PerSourceLog()
        self._refusing: dict[str, int] = {}  # source ip -> refusals being retransmitted
        self.allow = [ipaddress.ip_network(cidr, strict=False) for cidr in allow or []]
        self.transport: asyncio.DatagramTransport | None = None
        self._server_tx: dict[tuple[str, str, str], ServerTransaction] = {}
        self._client_tx: dict[tuple[str, str], asyncio.Future[SipResponse]] = {}
        self._invites: dict[tuple[str, int], ServerTransaction] = {}
        # Calls the bot placed: Call-ID -> who takes the responses to their INVITEs
        # (provisional, final, and 2xx retransmissions long after the transaction).
        self._invite_clients: dict[str, Callable[[SipResponse], None]] = {}

    # -- socket ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def local_port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return  # RFC 5626 CRLF keep-alive
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self._discarded("malformed")
            left_out = self._bad_log.allow(addr[0], time.monotonic())
            if left_out is not None:
                log.info("malformed SIP from %s:%d: %s%s", addr[0], addr[1], str(exc)[:120],
                         f" ({left_out} more from it not logged)" if left_out else "")  # fmt: skip
            self._answer_malformed(data, addr, exc)
            return
        try:
            if isinstance(message, SipResponse):
                self._on_response(message)
            else:
                self._on_request(message, addr)
        except Exception:
            if self._bad_log.allow(addr[0], time.monotonic()) is not None:
                log.exception("error handling SIP %s from %s (call %s)",
                              message.__class__.__name__, addr, message.call_id[:64])  # fmt: skip
            if isinstance(message, SipRequest) and message.method != "ACK":
                with contextlib.suppress(Exception):
                    self.send(response_to(message, 500), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)

    def _discarded(self, kind: str) -> None:
        if self.on_discarded is not None:
            self.on_discarded(kind)

    def send(self, message: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(message.to_bytes(), addr)

    # -- requests ------------------------------------------------------------------------------
    def _allowed(self, addr: tuple[str, int]) -> bool:
        if not self.allow:
            return True
        ip = ipaddress.ip_address(addr[0])
        return any(ip in net for net in self.allow)

    def _on_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        if not self._allowed(addr):
            self._discarded("forbidden")
            if request.method != "ACK":
                self.send(response_to(request, 403, "Forbidden (source not allowed)"), addr)
            return
        key = (request.call_id, request.branch, request.cseq[1])
        if request.method == "ACK":
            # ACK to a non-2xx shares the INVITE's branch (section 17.2.1); ACK to a 2xx is
            # a new transaction (section 13.2.2.4) matched by Call-ID and CSeq number.
            tx = self._invites.get((request.call_id, request.cseq[0]))
            if tx is not None:
                tx.acked.set()
            self.on_request(request, addr)
            return
        existing = self._server_tx.get(key)
        if existing is not None:
            # A retransmission: repeat our last response, do nothing else (section 17.2).
            if existing.last_response is not None:
                self.send(existing.last_response, existing.source)
            return
        if (
            request.method != "CANCEL"  # belongs to an INVITE already let in
            and tag_of(request.get("To") or "") is None  # in-dialog: a call already taken
            and not self._within_rate(request, addr)
        ):
            return
        tx = ServerTransaction(request, addr)
        self._server_tx[key] = tx
        loop = asyncio.get_running_loop()
        loop.call_later(TIMEOUT_64T1 + 5, self._server_tx.pop, key, None)
        if request.method == "INVITE":
            invite_key = (request.call_id, request.cseq[0])
            self._invites[invite_key] = tx
            loop.call_later(TIMEOUT_64T1 + 5, self._invites.pop, invite_key, None)
        self.on_request(request, addr)

    def _within_rate(self, request: SipRequest | None, addr: tuple[str, int]) -> bool:
        """The source's rate limit: True to go on; else a stateless 503 was sent (or, past
        the hard cap, nothing) and the request is done with."""
        verdict = self.limiter.check(addr[0], time.monotonic())
        if verdict is Verdict.ACCEPT:
            return True
        left_out = self._limit_log.allow(addr[0], time.monotonic())
        if left_out is not None:
            more = f" ({left_out} more not logged)" if left_out else ""
            log.warning("SIP source %s over its rate limit (%g/s): refusing%s",
                        addr[0], self.limiter.rate, more)  # fmt: skip
        if verdict is Verdict.REFUSE and request is not None:
            self._discarded("rate_limited")
            refused = response_to(request, 503, "Service Unavailable (request rate)")
            refused.add("Retry-After", str(self.limiter.retry_after))
            self.send(refused, addr)  # stateless: never retransmitted (section 21.5.4)
        else:
            self._discarded("dropped")
        return False

    def respond(
        self,
        request: SipRequest,
        response: SipResponse,
        addr: tuple[str, int],
        reliable: bool = False,
    ) -> ServerTransaction | None:
        """Send a response; record it for retransmitted requests; `reliable` retransmits
        it (final responses to INVITE) until the ACK comes or 64*T1 passes."""
        key = (request.call_id, request.branch, request.cseq[1])
        tx = self._server_tx.get(key)
        if tx is not None:
            tx.last_response = response
        self.send(response, addr)
        if reliable and tx is not None:
            if tx.retransmit_task is not None:
                tx.retransmit_task.cancel()
            refusal = response.status >= 300
            if refusal and self._refusing.get(addr[0], 0) >= MAX_RETRANSMITTING_REFUSALS:
                tx.retransmit_task = None
                return tx
            tx.retransmit_task = asyncio.create_task(
                self._retransmit(tx, response, addr, counted=refusal)
            )
        return tx

    async def _retransmit(
        self, tx: ServerTransaction, response: SipResponse, addr: tuple[str, int],
        counted: bool = False,
    ) -> None:  # fmt: skip
        """Section 17.2.1 timer G (and 13.3.1.4 for 2xx): resend until the ACK comes."""
        interval = T1
        waited = 0.0
        if counted:
            self._refusing[addr[0]] = self._refusing.get(addr[0], 0) + 1
        try:
            while waited < TIMEOUT_64T1:
                try:
                    await asyncio.wait_for(tx.acked.wait(), interval)
                    return
                except TimeoutError:
                    waited += interval
                    self.send(response, addr)
                    interval = min(interval * 2, T2)
            if self._bad_log.allow(addr[0], time.monotonic()) is not None:
                log.warning("no ACK for %d to call %s", response.status,
                            tx.request.call_id[:64])  # fmt: skip
        finally:
            if counted:
                left = self._refusing.get(addr[0], 1) - 1
                if left > 0:
                    self._refusing[addr[0]] = left
                else:
                    self._refusing.pop(addr[0], None)

    def _answer_malformed(self, data: bytes, addr: tuple[str, int], exc: SipParseError) -> None:
        """400 (or 505) to a request we could not parse, if it carries enough to answer at
        all; never to a response or an ACK (section 17.1.1.3: no response to an ACK), nor
        past the source's rate limit (a 503 would need the headers we could not read)."""
        if not self._allowed(addr) or data.startswith(b"SIP/"):
            return
        if self.limiter.check(addr[0], time.monotonic()) is not Verdict.ACCEPT:
            self._discarded("dropped")
            return
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        head = text.split("\n\n", 1)[0].split("\n")
        if not head or head[0].split(" ", 1)[0].upper() == "ACK":
            return
        wanted = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
                  "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}  # fmt: skip
        status = exc.status
        response = SipResponse(status=status, reason=f"{REASONS[status]} ({str(exc)[:80]})")
        found: set[str] = set()
        for line in head[1:]:
            name, colon, value = line.partition(":")
            key = wanted.get(name.strip().lower())
            if colon and key:
                response.add(key, value.strip())
                found.add(key)
        if "Via" not in found:
            return  # nowhere to send it per section 18.2.2; the source address is a guess
        for key in ("From", "To", "Call-ID", "CSeq"):
            if key not in found:
                response.add(key, "")
        # Section 8.2.6.2: a final response always carries a To tag.
        response.headers = [
            (k, f"{v};tag={new_tag()}" if k == "To" and tag_of(v) is None else v)
            for k, v in response.headers
        ]
        self.send(response, addr)

    # -- client transactions ----------------------------------------------------------------------
    def _on_response(self, response: SipResponse) -> None:
        try:
            _, method = response.cseq
        except SipParseError:
            return
        if method == "INVITE":
            handler = self._invite_clients.get(response.call_id)
            if handler is not None:
                handler(response)
            return
        future = self._client_tx.get((response.branch, method))
        if future is None or future.done():
            return
        if response.status >= 200:
            future.set_result(response)

    async def request(
        self, request: SipRequest, addr: tuple[str, int], timeout: float = TIMEOUT_64T1
    ) -> SipResponse:
        """Send a non-INVITE request and wait for its final response (timer E/F)."""
        key = (request.branch, request.method)
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._client_tx[key] = future
        interval = T1
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                self.send(request, addr)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"no final response to {request.method}")
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(interval, remaining))
                except TimeoutError:
                    interval = min(interval * 2, T2)
        finally:
            self._client_tx.pop(key, None)

    def watch_invites(self, call_id: str, handler: Callable[[SipResponse], None]) -> None:
        """Responses to our INVITEs with this Call-ID go to `handler` (outbound calls)."""
        self._invite_clients[call_id] = handler

    def unwatch_invites(self, call_id: str) -> None:
        self._invite_clients.pop(call_id, None)

    def stop_retransmitting(self, call_id: str) -> None:
        """The dialog is over (BYE): no more 2xx retransmissions for it."""
        for (cid, _), tx in self._invites.items():
            if cid == call_id:
                tx.acked.set()

    def close(self) -> None:
        for tx in self._server_tx.values():
            if tx.retransmit_task is not None:
                tx.retransmit_task.cancel()
        if self.transport is not None:
            self.transport.close()
