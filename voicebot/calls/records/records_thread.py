"""RecordsThread: an event loop on a thread of its own for the records' background work.

Place in the flow: the record writer, the webhook sender, the heartbeat and the retention
purge run here, not on the loop that carries the calls' media: their database and HTTP
work (SQLAlchemy, JSON, asyncpg or aiosqlite, httpx) was measured at ~0.6 % of a core per
call on the media loop at 50 calls (bench/RESULTS.md, "SIP load with call records"), time
the 20 ms media tick would wait behind. Coroutines are handed over with `run` and awaited
from the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class RecordsThread:
    def __init__(self, name: str = "records") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the records loop; await its result from the calling loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def call_soon(self, callback: Any, *args: Any) -> None:
        """Schedule a plain callback on the records loop, from any thread."""
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 10.0) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
