"""WebhookSender: delivers the outbox's rows to their receivers, at least once, in order.

Place in the flow: the call recorder writes one outbox row per event and receiver URL in
the same commit as the event's record (calls/records); the record writer wakes this sender
after each such commit, and it also polls, for retries coming due and rows other gateways
left. It claims due rows under a lease (`outbox.claim`), POSTs each one signed
(`signing`), and writes the outcome back: 2xx delivered; anything else retried with
exponential backoff and jitter, or dead-lettered once older than `webhooks.max_age_h`.
Per receiver, a call's events go one at a time in their order (a row waits while an
earlier one of its call is pending); different calls go in parallel, up to
`webhooks.concurrency`. It is a task of its own with async database and HTTP work only,
and every attempt is cut at `webhooks.timeout_s`, so a receiver that is down or hangs
costs calls nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebot.calls.records.writes import utc_now
from voicebot.calls.webhooks import outbox, signing
from voicebot.calls.webhooks.outbox import Backlog, Delivery
from voicebot.config.settings import WebhookSettings

if TYPE_CHECKING:
    from voicebot.calls.metrics import GatewayMetrics
    from voicebot.calls.records.service import CallRecords

COALESCE_S = 0.1  # claims (two transactions) at most ten a second, however many events
log = logging.getLogger("voicebot.webhooks")
LOG_EVERY_S = 60.0  # per receiver URL (and for the database): at most one line this often
LEASE_MARGIN_S = 5.0  # a lease outlives the attempt's timeout by this much
SHUTDOWN_GRACE_S = 2.0  # attempts in flight at shutdown get this long to finish
BODY_KEEP = 200  # characters of a receiver's error answer kept in last_error
BODY_READ = 64 * 1024  # bytes of an answer read at most (so the connection can be reused)


# httpx logs every request at INFO: for webhooks that is a line per attempt, which the
# throttled lines below replace. Only the sender's own requests are dropped (its tasks set
# this), not those of engines using httpx.
_SENDING: contextvars.ContextVar[bool] = contextvars.ContextVar("webhook_sending", default=False)


class _QuietSends(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _SENDING.get()


_QUIET_SENDS = _QuietSends()


def _url_label(url: str) -> str:
    """A receiver as logs show it: without user info or query, which may carry secrets."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "<invalid url>"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"[:200]


@dataclass
class _Reporter:
    """What went wrong since the last log line about one receiver (or the database)."""

    logged_at: float = float("-inf")
    failures: int = 0
    dead: int = 0
    last_error: str = ""
    failing: bool = False

    def due(self) -> bool:
        return time.monotonic() - self.logged_at >= LOG_EVERY_S

    def logged(self) -> None:
        self.logged_at = time.monotonic()
        self.failures = self.dead = 0


class WebhookSender:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: WebhookSettings,
        *,
        gateway: str,
        metrics: GatewayMetrics | None = None,
        poll_s: float = 1.0,
    ) -> None:
        if not settings.secret:
            raise ValueError("webhooks.secret (whsec_...) is required to send webhooks")
        self._engine = engine
        self._settings = settings
        self._key = signing.secret_key(settings.secret)
        self.gateway = gateway
        self._metrics = metrics
        self._poll_s = poll_s
        self._lease = timedelta(seconds=settings.timeout_s + LEASE_MARGIN_S)
        self._max_age = timedelta(hours=settings.max_age_h)
        self._random = random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Task[None], str] = {}
        self._client: httpx.AsyncClient | None = None
        self._backlog = Backlog(0, None, 0, None)
        self._backlog_at = float("-inf")
        self._next_due: datetime | None = None
        self._reporters: dict[str, _Reporter] = {}
        self._database = _Reporter()
        # Delivered, not yet written back: one UPDATE for the lot before the next claim
        # (a call's next event is claimable once its previous one is written delivered).
        self._delivered: list[Delivery] = []

    @classmethod
    def for_records(
        cls, records: CallRecords, metrics: GatewayMetrics | None = None, **kwargs: Any
    ) -> WebhookSender:
        """A sender over a started `CallRecords`' database, woken by its outbox commits."""
        assert records.engine is not None, "CallRecords.start() first"
        sender = cls(records.engine, records.settings.webhooks, gateway=records.gateway,
                     metrics=metrics, **kwargs)  # fmt: skip
        records.on_outbox(sender.wake)
        return sender

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        settings = self._settings
        httpx_log = logging.getLogger("httpx")
        if _QUIET_SENDS not in httpx_log.filters:
            httpx_log.addFilter(_QUIET_SENDS)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s),
            limits=httpx.Limits(max_connections=settings.concurrency,
                                max_keepalive_connections=settings.concurrency),
            headers={"user-agent": "voicebot-webhooks"},
        )  # fmt: skip
        try:
            released = await outbox.release(self._engine, self.gateway)
        except Exception as exc:
            released = 0
            self._database_failed(exc)
        if released:
            log.info("webhooks: %d delivery lease(s) of a previous run taken back", released)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-sender")

    async def close(self) -> None:
        """Stop claiming; attempts in flight get a moment, the rest are given back (their
        rows go again at the next start or from another gateway)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=SHUTDOWN_GRACE_S)
        try:
            await self._write_delivered(utc_now())
        except Exception as exc:  # their leases run out: sent again, same webhook-id
            self._database_failed(exc)
        cut = list(self._in_flight.items())
        for task, _ in cut:
            task.cancel()
        await asyncio.gather(*(task for task, _ in cut), return_exceptions=True)
        if cut:
            try:
                await outbox.release(self._engine, self.gateway, [i for _, i in cut])
            except Exception as exc:
                self._database_failed(exc)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """New rows were committed: look for work now rather than at the next poll."""
        self._wake.set()

    @property
    def pending(self) -> int:
        """Deliveries not yet made, as of the last poll."""
        return self._backlog.pending

    def oldest_pending_s(self) -> float:
        """Age of the oldest delivery not yet made (0: none), as of the last poll's rows."""
        oldest = self._backlog.oldest_pending_at
        return 0.0 if oldest is None else max(0.0, (utc_now() - oldest).total_seconds())

    def status(self) -> dict[str, object]:
        """For /healthz: figures as of the last poll."""
        return {
            "pending": self._backlog.pending,
            "oldest_pending_s": round(self.oldest_pending_s(), 3),
            "dead": self._backlog.dead,
            "in_flight": len(self._in_flight),
            "database": "down" if self._database.failing else "up",
        }  # fmt: skip

    # -- the claim loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a commit that lands meanwhile still wakes us.
            self._wake.clear()
            now = utc_now()
            free = self._settings.concurrency - len(self._in_flight)
            try:
                await self._write_delivered(now)
                claimed = await self._claim(now, free) if free > 0 else []
            except Exception as exc:
                self._database_failed(exc)
                await self._wait(self._poll_s)
                continue
            for delivery in claimed:
                task = asyncio.get_running_loop().create_task(
                    self._attempt(delivery), name=f"webhook-{delivery.id}"
                )
                self._in_flight[task] = delivery.id
                task.add_done_callback(self._attempt_done)
            if time.monotonic() - self._backlog_at >= self._poll_s:
                try:
                    await self._refresh_backlog(now)
                except Exception as exc:
                    self._database_failed(exc)
                    await self._wait(self._poll_s)
                    continue
            self._database_ok()
            if len(claimed) < free and self._next_due is not None and self._next_due <= now:
                # Due but not claimable (another gateway's lease): the poll will see it.
                self._next_due = None
            timeout = self._poll_s
            if self._next_due is not None and len(self._in_flight) < self._settings.concurrency:
                until = (self._next_due - utc_now()).total_seconds()
                timeout = min(self._poll_s, max(0.0, until))
            await self._wait(timeout)
            # Wakes come in bursts (each commit of events, each attempt done): one claim
            # for the burst, not one per wake. Its database work runs on the media loop.
            await asyncio.sleep(COALESCE_S)

    async def _write_delivered(self, now: datetime) -> None:
        if self._delivered:
            done = list(self._delivered)  # attempts finishing meanwhile are appended
            await outbox.delivered(self._engine, done, self.gateway, now)
            del self._delivered[: len(done)]

    async def _claim(self, now: datetime, limit: int) -> list[Delivery]:
        return await outbox.claim(self._engine, self.gateway, now, now + self._lease, limit)

    async def _refresh_backlog(self, now: datetime) -> None:
        self._backlog = await outbox.backlog(self._engine, now)
        self._backlog_at = time.monotonic()
        self._next_due = self._backlog.next_due_at

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt failed unexpectedly: %r", task.exception())
        # A slot is free, and the call's next event may be next in line.
        self._wake.set()

    # -- one attempt -----------------------------------------------------------------------------
    async def _attempt(self, delivery: Delivery) -> None:
        _SENDING.set(True)  # this task's context only
        content = signing.body(delivery.payload)
        headers = signing.signed_headers(self._key, delivery.id, int(time.time()), content)
        error = await self._post(delivery.url, content, headers)
        now = utc_now()
        metrics = self._metrics
        try:
            if error is None:
                self._delivered.append(delivery)  # written by the claim loop, with others
                if metrics is not None:
                    metrics.webhook_deliveries.labels("delivered").inc()
                    metrics.webhook_latency.observe(
                        max(0.0, (now - delivery.created_at).total_seconds())
                    )
                self._receiver_ok(delivery.url)
                return
            dead = now - delivery.created_at >= self._max_age
            next_at = None
            if not dead:
                wait = outbox.backoff(delivery.attempts + 1, self._settings.backoff_base_s,
                                      self._settings.backoff_max_s,
                                      self._random.uniform(0.5, 1.5))  # fmt: skip
                next_at = now + wait
                if self._next_due is None or next_at < self._next_due:
                    self._next_due = next_at
            await outbox.failed(self._engine, delivery, self.gateway, error,
                                next_attempt_at=next_at)  # fmt: skip
            if metrics is not None:
                metrics.webhook_deliveries.labels("dead" if dead else "failed").inc()
            self._receiver_failed(delivery.url, error, dead=dead)
        except Exception as exc:
            # The outcome is not written: the lease runs out and the row is sent again
            # (receivers drop the duplicate by its webhook-id).
            self._database_failed(exc)

    async def _post(self, url: str, content: bytes, headers: dict[str, str]) -> str | None:
        """None if the receiver answered 2xx, else what went wrong (one line)."""
        assert self._client is not None
        timeout = self._settings.timeout_s
        try:
            # The total is bounded too, not only each read: a receiver trickling its answer
            # must not hold the slot (or outlive the lease).
            async with asyncio.timeout(timeout):
                request = self._client.build_request("POST", url, content=content,
                                                     headers=headers)  # fmt: skip
                response = await self._client.send(request, stream=True)
                try:
                    answer = await _read_some(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}".splitlines()[0][:BODY_KEEP] or "HTTP error"
        except Exception as exc:  # a URL httpx will not send to, and the like
            return f"{type(exc).__name__}: {exc}".splitlines()[0][:BODY_KEEP]
        if 200 <= response.status_code < 300:
            return None
        text = answer.decode("utf-8", "replace").strip().replace("\n", " ")[:BODY_KEEP]
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")

    # -- bounded logging -------------------------------------------------------------------------
    def _receiver_failed(self, url: str, error: str, *, dead: bool) -> None:
        reporter = self._reporters.setdefault(url, _Reporter())
        reporter.failures += 1
        reporter.dead += dead
        reporter.last_error = error
        reporter.failing = True
        if reporter.due():
            log.warning("webhooks to %s failing: %s (%d failed attempt(s), %d dead-lettered"
                        " since the last report)", _url_label(url), error[:BODY_KEEP],
                        reporter.failures, reporter.dead)  # fmt: skip
            reporter.logged()

    def _receiver_ok(self, url: str) -> None:
        reporter = self._reporters.get(url)
        if reporter is not None and reporter.failing and reporter.due():
            log.info("webhooks to %s delivered again", _url_label(url))
            reporter.failing = False
            reporter.logged()

    def _database_failed(self, exc: BaseException) -> None:
        self._database.failing = True
        self._database.failures += 1
        if self._database.due():
            log.error("webhooks: database error (%d since the last report), deliveries wait: %s",
                      self._database.failures, str(exc).splitlines()[0][:300] if str(exc)
                      else type(exc).__name__)  # fmt: skip
            self._database.logged()

    def _database_ok(self) -> None:
        if self._database.failing:
            self._database.failing = False
            if self._database.due():
                log.info("webhooks: database back")
                self._database.logged()


async def _read_some(response: httpx.Response) -> bytes:
    """The start of an answer: enough for an error message, bounded whatever is sent."""
    kept = bytearray()
    async for chunk in response.aiter_bytes():
        if len(kept) < BODY_READ:
            kept += chunk[: BODY_READ - len(kept)]
        else:
            break
    return bytes(kept)
