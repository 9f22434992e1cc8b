"""Errors that become HTTP answers: ``{"error": "..."}`` with Triton's status mapping.

Triton maps invalid arguments to 400, not-found to 404, unavailable to 503 and internal errors to 500;
bnfold adds 401 (API key), 413 (body or image too large), 415 (not a PNG/JPEG image) and 504 (request timed
out in the queue). :func:`error_response` is the one policy that turns any exception into an answer.
"""

from __future__ import annotations

import logging
import uuid

import orjson

logger = logging.getLogger(__name__)


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


def error_response(exc: BaseException, where: str) -> tuple[int, bytes, dict[str, str]]:
    """The one error policy: (status, body, headers) for any exception a request raised.

    An :class:`ApiError` is answered with its status and message. Anything else is a bug: it is logged with
    its stack under a fresh request id, and the client gets a 500 that carries the same id (body and
    ``X-Request-Id``) and nothing about the server's internals.
    """
    if isinstance(exc, ApiError):
        return exc.status, orjson.dumps({"error": exc.message}), exc.headers
    request_id = uuid.uuid4().hex[:16]
    logger.error("unexpected error on %s (request id %s)", where, request_id, exc_info=exc)
    body = orjson.dumps({"error": f"internal server error (request id {request_id})"})
    return 500, body, {"X-Request-Id": request_id}
