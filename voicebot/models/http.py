"""Shared bits of the OpenAI-compatible HTTP engines: their base, client set-up and
error wording."""

from __future__ import annotations

import httpx

from voicebot.models.base import EngineError


def make_client(base_url: str, api_key: str | None, timeout_s: float) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
    )


class HttpEngine:
    """An engine behind an OpenAI-compatible server: its name, model and one client."""

    def __init__(
        self, kind: str, base_url: str, model: str, api_key: str | None, timeout_s: float
    ) -> None:
        self.name = f"openai-{kind}:{model}"
        self.model = model
        self._client = make_client(base_url, api_key, timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()


def raise_for_status(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    try:
        body = response.text[:300]
    except httpx.ResponseNotRead:
        body = ""
    raise EngineError(f"{what}: HTTP {response.status_code} from {response.url}: {body}")


def describe(exc: httpx.HTTPError, what: str) -> EngineError:
    return EngineError(f"{what}: {type(exc).__name__}: {exc}")
