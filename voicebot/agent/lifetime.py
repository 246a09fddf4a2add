"""Lifetime: how one call starts, runs and ends, in either of its two modes.

Place in the flow: `CallSession.run(frames)` (the session pulls its frames: WebSocket,
WebRTC, the simulator) and `run_driven()` (a shared clock steps it: the SIP media clock)
both run their body here, between the call's start (`call_started`, the greeting) and its
end. Whatever ends it (the frames running out, `end(reason)` from either side, an error, a
cancellation), the call is marked ending first, so nothing new starts, then the session
shuts down, then `call_ended` goes out with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


class Lifetime:
    def __init__(
        self,
        *,
        start: Callable[[], None],
        fail: Callable[[BaseException], None],
        shutdown: Callable[[], Awaitable[None]],
        ended: Callable[[str], None],
    ) -> None:
        """`start` opens the call, `fail` reports the body's error, `shutdown` stops its
        work, `ended(reason)` closes it."""
        self._start = start
        self._fail = fail
        self._shutdown = shutdown
        self._ended = ended
        # None while the call runs; once it is ending, the first reason given. Never reset.
        self.end_reason: str | None = None
        # Driven mode only: what `until_ended` waits on, made when it starts and resolved by
        # `end()`; None in pull mode and before the driven body has started.
        self._stopped: asyncio.Future[None] | None = None

    @property
    def ending(self) -> bool:
        return self.end_reason is not None

    def end(self, reason: str) -> None:
        """End after the current frame; the first reason given is the call's."""
        self.end_reason = self.end_reason or reason
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def until_ended(self) -> None:
        """The driven mode's body: returns once `end` has been called."""
        self._stopped = asyncio.get_running_loop().create_future()
        if self.end_reason is None:
            await self._stopped

    async def run(self, body: Coroutine[Any, Any, None]) -> str:
        """Start the call, await `body`, shut down; returns the end reason."""
        self._start()
        reason = "caller_hangup"
        try:
            await body
            if self.end_reason is not None:
                reason = self.end_reason
        except asyncio.CancelledError:
            reason = self.end_reason or "cancelled"
            raise
        except Exception as exc:
            self._fail(exc)
            reason = "error"
        finally:
            # From here on the call is ending, whatever ended it (also a cancellation): a
            # media clock stops stepping it, so nothing new starts during the shutdown.
            self.end_reason = self.end_reason or reason
            await self._shutdown()
            self._ended(reason)
        return reason
