"""The call variables of an Asterisk AudioSocket call, looked up by its UUID over HTTP.

Place in the flow: AudioSocket carries nothing but the call's UUID (its first frame), so
what the dialplan knew of the caller (account, language, ...) is fetched from the operator's
own service: with `audiosocket.lookup_url` set, the leg GETs it once the UUID is in (before
the session and its greeting start), within `audiosocket.lookup_timeout_s`. The answer must
be a JSON object; its scalar fields become the call's variables under the one rule of
`calls/variables.py`. Any failure (unreachable, slow, not 2xx, not a JSON object, over
64 KiB) is one log line and the call goes on without variables.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import quote

import httpx

from voicebot.calls.variables import call_variables

log = logging.getLogger("voicebot.telephony.audiosocket")

MAX_BODY = 64 * 1024


def lookup_url(template: str, call_uuid: str) -> str:
    """`template` with `{uuid}` replaced by the UUID, or `uuid=` added to its query."""
    value = quote(call_uuid, safe="")
    if "{uuid}" in template:
        return template.replace("{uuid}", value)
    return f"{template}{'&' if '?' in template else '?'}uuid={value}"


async def lookup_variables(
    template: str, call_uuid: str, timeout_s: float, *, call_id: str = ""
) -> dict[str, str]:
    """The call's variables from the lookup service; {} (logged once) if it fails."""
    url = lookup_url(template, call_uuid)
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > MAX_BODY:
            raise ValueError(f"answer of {len(response.content)} bytes > {MAX_BODY}")
        body = json.loads(response.content)
        if not isinstance(body, dict):
            raise ValueError(f"answer is a JSON {type(body).__name__}, not an object")
    except (TimeoutError, httpx.HTTPError, ValueError) as exc:
        what = f"no answer in {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc)
        log.warning("audiosocket call %s (%s): variables lookup failed, going on without: "
                    "%s: %s", call_id, call_uuid, type(exc).__name__, what[:200])  # fmt: skip
        return {}
    return call_variables(body)
