"""CallActions: what the bot's reply asked the call to do (hang up, transfer), carried out.

Place in the flow: when a reply that ended with a `CallAction` has been fully played, the
session hands the action here. With a transport control (SIP: BYE, REFER) it runs as a task
and the call ends once the transport has done it; without one, the call simply ends now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from voicebot.agent.reply import ErrorHandler
from voicebot.models.base import CallAction


class CallControl(Protocol):
    """What a transport can do to its call when the bot asks (SIP: BYE, REFER)."""

    async def hangup(self) -> None: ...

    async def transfer(self, target: str) -> None: ...


class CallActions:
    def __init__(
        self,
        control: CallControl | None,
        end: Callable[[str], None],
        on_error: ErrorHandler,
        on_transferred: Callable[[str], None] = lambda target: None,
    ) -> None:
        self._control = control
        self._end = end
        self._on_error = on_error
        self._on_transferred = on_transferred
        # None unless an action is being carried out by the transport: from the end of the
        # reply that asked for it until the control call returns or fails. The session is
        # not idle meanwhile.
        self.pending: CallAction | None = None

    def perform(self, action: CallAction) -> None:
        if self._control is None:  # nobody to hand the call to: it ends here
            if action.kind == "transfer":
                self._on_transferred(action.target or "")
            self._end("transferred" if action.kind == "transfer" else "bot_hangup")
        else:
            self.pending = action
            asyncio.get_running_loop().create_task(self._perform(self._control, action))

    async def _perform(self, control: CallControl, action: CallAction) -> None:
        try:
            if action.kind == "transfer":
                await control.transfer(action.target or "")
                self._on_transferred(action.target or "")
                self._end("transferred")
            else:
                await control.hangup()
                self._end("bot_hangup")
        except Exception as exc:
            # The call goes on: the failure is reported like an engine's.
            self._on_error(f"call control {action.kind}", exc)
        finally:
            self.pending = None
