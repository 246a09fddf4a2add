"""CallActions: what the bot's reply asked the call to do (hang up, transfer), carried out.

Place in the flow: when a reply that ended with a `CallAction` has been fully played, the
session hands the action here. With a transport control (SIP: BYE, REFER) it runs as a task
and the call ends once the transport has done it; without one (the WebSocket, WebRTC and
the CPaaS media-stream legs: nothing on their wire can move the call), the call simply
ends now, a transfer announced by the `transferred` event (the `call.transferred` webhook:
the customer's system redirects the call with its provider's API).

A transfer has an outcome (`TransferOutcome`): done, the call ends as `transferred`; or
failed (`TransferFailedError` from the transport: refused, timed out, the target busy), the
call goes on and the session tells the caller (`on_transfer_failed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from voicebot.agent.reply import ErrorHandler
from voicebot.models.base import CallAction

log = logging.getLogger("voicebot.agent")


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """How a transfer ended. `status`: the final status the transport saw (SIP: the REFER's
    response, or the NOTIFY sipfrag's; RFC 3515 section 2.4.5), None if its wire has none;
    `reason`: its reason phrase or what happened; `confirmed`: the target's side reported
    success (False: handed over without a final report, see `SipCall.transfer`)."""

    status: int | None
    reason: str
    confirmed: bool = True


class TransferFailedError(Exception):
    """The transport could not transfer the call; the call is still up."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"{status or ''} {reason}".strip())
        self.status = status
        self.reason = reason


# Transports without a transfer of their own: announced, not carried out.
ANNOUNCED = TransferOutcome(None, "announced (no transfer on this transport)", confirmed=False)


class CallControl(Protocol):
    """What a transport can do to its call when the bot asks (SIP: BYE, REFER)."""

    async def hangup(self) -> None: ...

    async def transfer(self, target: str) -> TransferOutcome | None:
        """Transfer the call to `target`; return the outcome (None: done, no detail) or
        raise `TransferFailedError` (the call stays up)."""
        ...


TransferHandler = Callable[[str, TransferOutcome], None]


class CallActions:
    def __init__(
        self,
        control: CallControl | None,
        end: Callable[[str], None],
        on_error: ErrorHandler,
        on_transferred: TransferHandler = lambda target, outcome: None,
        on_transfer_failed: TransferHandler = lambda target, outcome: None,
    ) -> None:
        self._control = control
        self._end = end
        self._on_error = on_error
        self._on_transferred = on_transferred
        self._on_transfer_failed = on_transfer_failed
        # None unless an action is being carried out by the transport: from the end of the
        # reply that asked for it until the control call returns or fails. The session is
        # not idle meanwhile.
        self.pending: CallAction | None = None

    def perform(self, action: CallAction) -> None:
        if self._control is None:  # nobody to hand the call to: it ends here
            if action.kind == "transfer":
                self._on_transferred(action.target or "", ANNOUNCED)
            self._end("transferred" if action.kind == "transfer" else "bot_hangup")
        else:
            self.pending = action
            asyncio.get_running_loop().create_task(self._perform(self._control, action))

    async def _perform(self, control: CallControl, action: CallAction) -> None:
        try:
            if action.kind == "transfer":
                await self._transfer(control, action.target or "")
            else:
                await control.hangup()
                self._end("bot_hangup")
        except Exception as exc:
            # The call goes on: the failure is reported like an engine's.
            self._on_error(f"call control {action.kind}", exc)
        finally:
            self.pending = None

    async def _transfer(self, control: CallControl, target: str) -> None:
        try:
            outcome = await control.transfer(target) or TransferOutcome(None, "done")
        except TransferFailedError as exc:
            log.info("transfer to %s failed: %s", target, exc)
            self._on_transfer_failed(target, TransferOutcome(exc.status, exc.reason))
            return
        except Exception as exc:  # a transport bug: reported, and the call still goes on
            self._on_error("call control transfer", exc)
            self._on_transfer_failed(target, TransferOutcome(None, f"{type(exc).__name__}: {exc}"))
            return
        self._on_transferred(target, outcome)
        self._end("transferred")
