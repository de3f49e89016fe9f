"""The one error type of the service's own modules, free of any web framework: the app turns it into a JSON
response ``{"error": ..., "detail": ..., **extra}`` with its status code."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """``error``: a short, stable phrase a client can branch on; ``detail``: the sentence a person reads."""

    def __init__(self, http_status: int, error: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = http_status
        self.error = error
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, **self.extra}


def not_found(what: str, name: str) -> ApiError:
    return ApiError(404, f"{what} not found", f"no {what} {name!r}", **{what.replace(" ", "_"): name})


def invalid_override(key: str, detail: str) -> ApiError:
    return ApiError(422, "invalid override", detail, key=key)
