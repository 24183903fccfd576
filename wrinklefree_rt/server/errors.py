"""OpenAI's error body (``{"error": {"message", "type", "param", "code"}}``) and its statuses."""
from __future__ import annotations

import msgspec
from starlette.responses import Response

__all__ = ["ApiError", "error_response"]

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "server_error", 500: "server_error"}


class ApiError(Exception):
    """A request answered with an error status; ``param`` names the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def error_response(error: ApiError) -> Response:
    return Response(msgspec.json.encode(error.body()), status_code=error.status,
                    media_type="application/json", headers=error.headers)
