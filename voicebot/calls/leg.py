"""The `Leg` seam: one way a call arrives, and the one lifecycle every leg goes through.

A leg is the only code that knows its wire: how the peer is refused, how the call is set
up on the wire (accept a WebSocket, answer an SDP offer, send 200 OK), how frames come in
and bot frames and `clear` go out, what hang-up, transfer and DTMF mean there, and how the
wire is torn down. `run_leg` owns the order, the same for every transport:

    admit (process-wide, then the leg's own rules) -> open (the wire) -> start (the
    session) -> run (media until the call ends) -> teardown (the wire) -> record

A refused call never opens; a leg whose set-up fails never starts a session; whatever
happens after admission, the call's place is freed and its wire torn down exactly once.
Adding a transport is one class implementing `Leg` and one `run_leg(manager, leg)`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from voicebot.agent.session import CallSession
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia

log = logging.getLogger("voicebot.calls")


class LegSetupError(Exception):
    """The leg could not set its call up on the wire; it has already told its peer why.
    `outcome`: the call's end reason when the wire said why (an outbound call's `busy`,
    `no_answer`, ...); the record keeps it."""

    def __init__(self, message: str, outcome: str | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class Leg(Protocol):
    """One call on one transport. Legs subclass this for the defaults of the optional
    steps (`admit`, `call_id`)."""

    transport: str  # "ws", "webrtc", "sip", ...: the metrics label and call-id prefix

    @property
    def call_id(self) -> str | None:
        """The call's id if the transport has one of its own (SIP: its Call-ID)."""
        return None

    def admit(self) -> None:
        """The transport's own admission rules, after the process-wide ones: raise
        CallRefusedError to refuse (e.g. SIP's media clock running late); `run_leg`
        counts the refusal."""
        return None

    async def refuse(self, refusal: CallRefusedError) -> None:
        """Tell the peer the call is not taken (WS close 1013, SIP 486/503, HTTP 503)."""
        ...

    async def open(self, call_id: str) -> LegMedia:
        """Set the call up on the wire; raise LegSetupError (peer told) if it cannot be."""
        ...

    async def run(self, session: CallSession) -> str:
        """Carry the call's media until it ends; return the end reason. The session is
        run here (`session.run(frames)` or, with a shared clock, `session.run_driven()`)."""
        ...

    async def close(self, reason: str | None) -> None:
        """Tear the wire down (hang up if the peer is still there, free sockets and ports).
        `reason` is the end reason, or None if the call never started."""
        ...


def admit_leg(manager: CallManager, leg: Leg) -> str:
    """Admission (process-wide, then the leg's own rules) and the call's place reserved;
    its call id. Raises CallRefusedError, counted; nothing is reserved then."""
    call_id = leg.call_id or manager.new_call_id(leg.transport)
    manager.admit(leg.transport)  # counts its own refusals by kind
    try:
        leg.admit()
    except CallRefusedError as exc:
        manager.refused(leg.transport, exc.kind)
        raise
    manager.reserve(call_id, leg.transport)
    return call_id


async def run_leg(manager: CallManager, leg: Leg) -> str | None:
    """Run one call of `leg` from admission to its end; returns the end reason, or None if
    it was refused or never got set up."""
    try:
        call_id = admit_leg(manager, leg)
    except CallRefusedError as exc:
        await leg.refuse(exc)
        return None
    return await run_admitted_leg(manager, leg, call_id)


async def run_admitted_leg(manager: CallManager, leg: Leg, call_id: str) -> str | None:
    """The rest of `run_leg` for a call `admit_leg` took (outbound calls are admitted when
    the API asks, so that a refusal is its answer)."""
    manager.reserve(call_id, leg.transport)  # again: from the task that now runs it
    reason: str | None = None
    outcome: str | None = None
    try:
        media = await leg.open(call_id)
        handle = manager.start(call_id, leg.transport, media)
        reason = "error"
        reason = await leg.run(handle.session)
    except LegSetupError as exc:
        outcome = exc.outcome
        log.warning("call %s (%s) not set up: %s", call_id, leg.transport, str(exc)[:200])
    except asyncio.CancelledError:
        if reason is not None:  # cancelled while running (not while setting up)
            reason = "cancelled"
        raise
    except Exception:
        log.exception("call %s (%s): the leg failed", call_id, leg.transport)
    finally:
        try:
            await leg.close(reason)
        except Exception:
            log.exception("call %s (%s): tearing the leg down failed", call_id, leg.transport)
        finally:  # even if cancelled again while tearing down: the place is freed
            manager.finish(call_id, reason if reason is not None else outcome)
    return reason
