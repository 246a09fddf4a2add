"""What an HTTP or WebSocket request says about its caller, kept in the call's record as
`from`, `to` and `user_agent` (the browser legs' counterpart of SIP's From and To)."""

from __future__ import annotations

from starlette.requests import HTTPConnection


def caller_info(conn: HTTPConnection) -> dict[str, object]:
    client = conn.client
    return {
        "from": f"{client.host}:{client.port}" if client else None,
        "to": conn.url.path,
        "user_agent": (conn.headers.get("user-agent") or "")[:200] or None,
    }
