"""Errors in OpenAI's shape, on every route: `{"error": {"message", "type", "param", "code"}}`.

A handler raises `APIError(status, message, param=...)`; a `DanluError` (a user error from the
loaders, the preprocessing or the generation options) is a 400; FastAPI's validation errors
and Starlette's 404/405 are rewritten into the same shape; anything else is a bug: a 500 whose
body says so and whose traceback goes to the log only."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from danlu.errors import DanluError

log = logging.getLogger("danlu.serve")

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    504: "server_error",
}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body(status, message, param, code), status_code=status, headers=headers)


def field_path(loc: Any) -> str:
    """pydantic's location ("body", "messages", 0, "content") as `messages[0].content`."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """The first of pydantic's errors as one line naming the field, and that field."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', 'malformed')}", None
    param = field_path(first.get("loc", ()))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"'{param}' is required", param or None
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r:.60})"
    return f"'{param}': {msg}{shown}", param or None


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, e: APIError) -> JSONResponse:
        return response(e.status, e.message, e.param, e.code)

    @app.exception_handler(DanluError)
    async def _user(request: Request, e: DanluError) -> JSONResponse:
        return response(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return response(400, message, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 404:
            return response(404, f"no route {request.method} {request.url.path}; see GET /v1/models",
                            code="not_found")
        if e.status_code == 405:
            return response(405, f"{request.method} is not allowed on {request.url.path}")
        return response(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return response(500, "internal server error (a bug in danlu; the server log has the traceback)")
