"""Times and page cursors as the records tables, the API and the webhooks show them.

Place in the flow: rows hold aware UTC datetimes (SQLite hands them back naive: they are
UTC); everything that leaves the gateway shows them as ISO 8601 with `Z`; list endpoints
page by keyset on (a time, an id), handed to clients as an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime


class CursorError(ValueError):
    """A `cursor` that is not one this API gave out."""


def as_utc(moment: datetime | None) -> datetime | None:
    """Aware UTC; naive values (SQLite's, or a query's without offset) are UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z`."""
    value = as_utc(moment)
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def encode_cursor(moment: datetime, key: str) -> str:
    """The cursor after the row at (`moment`, `key`)."""
    raw = json.dumps([iso(moment), key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, key = json.loads(raw)
        if not isinstance(moment, str) or not isinstance(key, str):
            raise TypeError
        value = as_utc(datetime.fromisoformat(moment.replace("Z", "+00:00")))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CursorError("bad cursor: pass next_cursor of a previous page as it was") from exc
    assert value is not None
    return value, key
