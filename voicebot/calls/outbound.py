"""Outbound calls: what the API asks for, the pace it may dial at, and how a dial ends.

Place in the flow: `POST /v1/calls` (gateway/calls_api.py) builds an `OutboundRequest` and
hands it to `OutboundCalls.place`, which applies the campaign limits (concurrent outbound
calls, calls started per second) and passes it to the transport's `Dialer` (SIP:
telephony/outbound.py). The dialer admits the call like any other, returns its id at once,
and runs it as a `Leg`: the wire's ring, answer or refusal becomes the call's outcome.
A call that is never answered still leaves a record and a `call.ended` webhook whose
`reason` is one of `OUTCOMES`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

EarlyMedia = Literal["ignore", "pass"]

# How an outbound call that never got answered ends (the record's `end_reason`).
OUTCOMES = ("busy", "no_answer", "rejected", "unreachable", "auth_failed", "cancelled",
            "failed")  # fmt: skip


def outcome_of_status(status: int) -> str:
    """The outcome of a final non-2xx response to our INVITE (RFC 3261 section 21)."""
    if status in (486, 600):
        return "busy"
    if status in (408, 480):  # Request Timeout / Temporarily Unavailable: nobody picked up
        return "no_answer"
    if status == 487:  # Request Terminated: our own CANCEL
        return "cancelled"
    if status in (401, 407):
        return "auth_failed"
    if status in (503, 502, 504):
        return "unreachable"
    return "rejected"


@dataclass(frozen=True)
class Trunk:
    """Where and as whom an outbound call goes out (each field overrides the setting)."""

    proxy: str | None = None  # outbound proxy, e.g. "sip:trunk.example.com:5060"
    username: str | None = None  # digest credentials for 401/407 challenges
    password: str | None = None


@dataclass(frozen=True)
class OutboundRequest:
    """One call to place (the body of `POST /v1/calls`, validated)."""

    to: str  # a SIP URI, or a number dialled through the trunk
    caller_id: str | None = None  # the From user / display number
    trunk: Trunk = field(default_factory=Trunk)
    variables: dict[str, str] = field(default_factory=dict)
    greeting: str | None = None
    system_prompt: str | None = None
    webhook_url: str | None = None
    ring_timeout_s: float | None = None
    early_media: EarlyMedia | None = None


class Dialer(Protocol):
    """A transport that can place calls (SIP)."""

    transport: str

    def dial(self, request: OutboundRequest) -> str:
        """Admit and start one outbound call; its id. Raises CallRefusedError (process or
        transport admission) or ValueError (a request the transport cannot dial)."""
        ...

    def outbound_count(self) -> int:
        """Outbound calls of this dialer dialling, ringing or up."""
        ...


class NoDialerError(Exception):
    """No transport here can place this call (SIP is off): HTTP 503."""


class OutboundLimitError(Exception):
    """The campaign limits refuse this call now (HTTP 429 with Retry-After)."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class CallRate:
    """A token bucket of call starts: `rate` per second sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._at = time.monotonic()

    def wait_s(self, now: float | None = None) -> float:
        """0 if a call may start now (and takes its token), else how long until one may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class OutboundCalls:
    """The campaign limits in front of the dialers; one per process."""

    def __init__(self, max_calls: int, calls_per_second: float, burst: int) -> None:
        self.max_calls = max_calls
        self.rate = CallRate(calls_per_second, burst)
        self.dialers: dict[str, Dialer] = {}

    def add(self, dialer: Dialer) -> None:
        self.dialers[dialer.transport] = dialer

    def remove(self, dialer: Dialer) -> None:
        if self.dialers.get(dialer.transport) is dialer:
            del self.dialers[dialer.transport]

    def active(self) -> int:
        return sum(d.outbound_count() for d in self.dialers.values())

    def place(self, request: OutboundRequest, transport: str = "sip") -> str:
        """Dial `request`; its call id. Raises NoDialerError, OutboundLimitError (cap or
        rate), the dialer's CallRefusedError (admission) or ValueError (bad target)."""
        dialer = self.dialers.get(transport)
        if dialer is None:
            raise NoDialerError(f"no {transport} leg to dial from (is SIP enabled?)")
        if self.active() >= self.max_calls:
            raise OutboundLimitError(f"{self.max_calls} outbound calls already up", 5.0)
        wait = self.rate.wait_s()
        if wait > 0:
            raise OutboundLimitError(f"over {self.rate.rate:g} calls per second", wait)
        return dialer.dial(request)
