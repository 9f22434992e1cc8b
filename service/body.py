"""Request bodies, read with the size limit counted while they stream in, for every content type.

The limit (``BNFOLD_MAX_BODY_BYTES``) is checked against a declared Content-Length before anything is read,
then byte by byte as chunks arrive, whatever the transfer encoding (chunked included): the reader stops at
the first chunk past the limit, so an oversized upload never sits in memory or on disk. A gzip/deflate body
is held to the same limit after decompression. Multipart bodies stream through python-multipart (via
Starlette's parser) fed by the same counted stream; only fields named ``file`` are accepted.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import ApiError, bad_request

SETTING = "BNFOLD_MAX_BODY_BYTES"
IMAGE_FIELD = "file"
MAX_IMAGES = 256  # files in one multipart body


def too_large(limit: int, what: str = "request body") -> ApiError:
    return ApiError(413, f"{what} exceeds the limit of {limit} bytes ({SETTING})")


async def limited(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """``chunks``, refused with 413 as soon as the declared or the counted size passes ``limit``.

    ``headers`` must answer lower-case names.
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, f"request body of {declared} bytes")
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise bad_request(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    decoder = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise too_large(limit, "decompressed request body")
    return out


def body_too_large(headers: Mapping[str, str], limit: int) -> ApiError:
    """The 413 for a body past ``limit``, naming its declared size when it has one."""
    declared = headers.get("content-length", "")
    return too_large(limit, f"request body of {declared} bytes" if declared.isdigit() else "request body")


def whole_body(headers: Mapping[str, str], parts: list[bytes], limit: int) -> bytes:
    """A body that has arrived (its pieces, in order; one piece is used as it is, not copied), held to the
    limits :func:`read_body` applies while reading: at most ``limit`` bytes before and after Content-Encoding
    is undone."""
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(body) > limit:
        raise body_too_large(headers, limit)
    return _decompress(body, headers.get("content-encoding", "").lower(), limit)


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole request body (at most ``limit`` bytes, before and after Content-Encoding is undone)."""
    return whole_body(headers, [chunk async for chunk in limited(headers, chunks, limit)], limit)


def content_type(headers: Mapping[str, str]) -> str:
    """The media type of the body, lower case, without parameters."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> list[tuple[str, bytes]]:
    """(filename, bytes) of each image: multipart ``file`` fields, or one raw image/png or image/jpeg body."""
    kind = content_type(headers)
    if kind in ("image/png", "image/jpeg"):
        return [("image", await read_body(headers, chunks, limit))]
    if kind != "multipart/form-data":
        raise ApiError(
            415,
            f"send multipart/form-data with '{IMAGE_FIELD}' fields, or an image/png or image/jpeg body, not "
            f"{kind or 'no Content-Type'}",
        )
    if b"boundary" not in parse_options_header(headers.get("content-type", ""))[1]:
        raise bad_request("multipart/form-data needs a boundary parameter in its Content-Type")
    parser = MultiPartParser(
        Headers({"content-type": headers["content-type"]}),
        limited(headers, chunks, limit),  # type: ignore[arg-type]  # an async generator, as the parser wants
        max_files=MAX_IMAGES,
        max_fields=MAX_IMAGES,
        max_part_size=limit,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise bad_request(f"malformed multipart body: {exc.message}") from None
    images = []
    for name, value in form.multi_items():
        if name != IMAGE_FIELD or not isinstance(value, UploadFile):
            raise bad_request(f"unexpected multipart field {name!r}; send each image as a file field '{IMAGE_FIELD}'")
        images.append((value.filename or "image", await value.read()))
        await value.close()
    if not images:
        raise bad_request(f"multipart body holds no file; send the image(s) in a field named '{IMAGE_FIELD}'")
    return images
