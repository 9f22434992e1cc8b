"""One v2 inference over HTTP, answered: status, headers and body, whichever way the request came in.

Both HTTP paths to :func:`service.pipeline.infer_http` end here: the ASGI route
(:func:`service.routes.infer.answer_infer`) and bnfold's HTTP protocol answering inference itself
(:mod:`service.http_protocol`). Errors go through :func:`service.errors.error_response`, the one error policy;
a request cancelled because its client went away raises :class:`Gone` (nobody is left to answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from service.errors import error_response
from service.pipeline import infer_http
from service.protocol import HEADER_LENGTH

Read = Callable[[Mapping[str, str], int], Awaitable[bytes]]
JSON = b"application/json"
BINARY = b"application/octet-stream"


class Gone(Exception):
    """The request was cancelled because its client disconnected: there is no one to answer."""


async def answer(
    manager: Any,
    model: str,
    version: str | None,
    headers: Mapping[str, str],
    read: Read,
    gone: Callable[[], bool],
    returned_after: float | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, response headers, body) for one inference; ``headers`` with lower-case names, ``read`` gives
    the body, ``returned_after`` how soon the client sends again after an answer (see
    :func:`~service.pipeline.infer_http`), ``gone()`` says whether a cancellation came from the client going
    away (then :class:`Gone` is raised, and the task's cancellation is taken back)."""
    status, content_type = 200, JSON
    try:
        body, extra = await infer_http(manager, model, version, headers, read, returned_after)
        if HEADER_LENGTH in extra:
            content_type = BINARY
    except asyncio.CancelledError:
        if not gone():
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise Gone from None
    except Exception as exc:  # the error policy decides: ApiError -> its status, anything else -> 500
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"
        status, body, extra = error_response(exc, f"POST {path}")
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    return status, raw, body
