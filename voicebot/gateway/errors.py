"""One error shape for every HTTP route of the gateway: `{"error": "<why>"}` with the right
status (and headers such as WWW-Authenticate or Retry-After), as `/webrtc/offer` has always
answered; routes raise HTTPException and this turns it into that body."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


async def _as_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))  # fmt: skip


def use_error_shape(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _as_error)
