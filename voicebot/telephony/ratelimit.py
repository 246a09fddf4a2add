"""Per-source limits on the SIP socket: how many new requests one address may make us answer.

`SipEndpoint` asks `SourceLimiter.check(ip)` for each new request outside a dialog (INVITE,
OPTIONS, REGISTER, unknown methods, ...; not ACK, CANCEL, in-dialog requests or
retransmissions, which belong to calls already taken) and for each malformed datagram it
would answer with 400. Every answer costs a datagram, an INVITE's refusal up to eleven
(timer G), and UDP source addresses are free to forge, so one source must not be able to
take the gateway's capacity or turn it into a reflector:

- each source IP has a token bucket of `burst` requests refilled at `rate` per second
  (a trunk sending a burst of calls at once stays under it; Kamailio's pike module counts
  requests per IP per sampling window to the same end);
- past it, the request gets a stateless 503 with Retry-After (RFC 3261 section 21.5.4),
  not retransmitted, while a second bucket of `rate` refusals a second allows;
- past that too, the request is dropped unanswered: the hard cap, so a flood's answers
  are bounded by `2 * rate` datagrams a second per source whatever it sends.

Sources are kept in least-recently-seen order, at most `max_sources` of them: a flood from
forged addresses costs bounded memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from enum import Enum


class Verdict(Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"  # answer 503 with Retry-After
    DROP = "drop"  # answer nothing


class _Buckets:
    __slots__ = ("admit", "refuse", "when")

    def __init__(self, admit: float, refuse: float, when: float) -> None:
        self.admit = admit
        self.refuse = refuse
        self.when = when


class SourceLimiter:
    """Token buckets per source IP; `rate` 0 turns the limit off."""

    def __init__(self, rate: float, burst: int, max_sources: int = 8192) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.refusal_burst = max(1.0, rate)  # one second's worth of 503s at once
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Buckets] = OrderedDict()

    @property
    def retry_after(self) -> int:
        """Seconds for a refused source to get half its bucket back."""
        return max(1, math.ceil(self.burst / self.rate / 2)) if self.rate > 0 else 1

    def check(self, ip: str, now: float) -> Verdict:
        if self.rate <= 0:
            return Verdict.ACCEPT
        buckets = self._sources.get(ip)
        if buckets is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)  # the source seen longest ago
            buckets = self._sources[ip] = _Buckets(self.burst, self.refusal_burst, now)
        else:
            self._sources.move_to_end(ip)
            gained = (now - buckets.when) * self.rate
            buckets.when = now
            buckets.admit = min(float(self.burst), buckets.admit + gained)
            buckets.refuse = min(self.refusal_burst, buckets.refuse + gained)
        if buckets.admit >= 1:
            buckets.admit -= 1
            return Verdict.ACCEPT
        if buckets.refuse >= 1:
            buckets.refuse -= 1
            return Verdict.REFUSE
        return Verdict.DROP
