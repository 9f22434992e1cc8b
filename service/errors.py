"""Errors that become HTTP answers: ``{"error": "..."}`` with Triton's status mapping.

Triton maps invalid arguments to 400, not-found to 404, unavailable to 503 and internal errors to 500;
bnfold adds 401 (API key), 413 (body too large) and 504 (request timed out in the queue).
"""

from __future__ import annotations


class ApiError(Exception):
    """An expected failure of a request, answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def unavailable(message: str, retry_after_s: int | None = None) -> ApiError:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return ApiError(503, message, headers)
