"""RecordWrite: one row to insert or update, as the call recorder hands it to the writer.

Place in the flow: `recorder` turns call events into these, `writer` commits them in order,
in batches, to the tables of `schema`. Plain data so a batch can be retried as it was.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Table = Literal["calls", "turns", "call_events", "webhook_outbox"]


@dataclass(frozen=True, slots=True)
class RecordWrite:
    table: Table
    row: dict[str, Any]
    # "insert" (duplicates of the primary key skipped) or "update" of calls by `row["id"]`.
    op: Literal["insert", "update"] = "insert"

    @property
    def droppable(self) -> bool:
        """Only the event log may be shed when the queue is full: records, turns and
        webhooks are what a call centre relies on."""
        return self.table == "call_events"


def utc_now() -> datetime:
    return datetime.now(UTC)


def webhook_id() -> str:
    """A new delivery's id (`webhook-id`): unique, the same on each of its retries."""
    return "msg_" + uuid.uuid4().hex
