"""Issue 10 defects 4 and 5: the body limit holds for a chunked multipart upload (read no further than the limit,
memory flat), and a large image is decoded off the event loop (health checks keep answering)."""

from __future__ import annotations

import asyncio
import io
import select
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.service.conftest import ServerProcess, asgi_scope, make_client

LIMIT = 1024 * 1024
UPLOAD = 200 * 1024 * 1024
CHUNK = 64 * 1024
BOUNDARY = b"bnfoldboundary"


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _chunked_multipart(sent: list[int]) -> AsyncIterator[bytes]:
    """A 200 MB multipart body made on the fly (never held whole), counting what the app pulled."""
    yield b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
    yield b"Content-Type: image/png\r\n\r\n"
    block = b"\x00" * CHUNK
    for _ in range(UPLOAD // CHUNK):
        sent[0] += CHUNK
        yield block
    yield b"\r\n--" + BOUNDARY + b"--\r\n"


async def _post_stream(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: AsyncIterator[bytes]) -> Any:
    """POST a streamed body straight to the ASGI app, as a chunked request (no Content-Length)."""
    scope = asgi_scope(path, [(b"transfer-encoding", b"chunked"), *headers])
    iterator = body.__aiter__()
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        try:
            return {"type": "http.request", "body": await iterator.__anext__(), "more_body": True}
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer


def test_chunked_multipart_upload_over_the_limit_is_413_read_no_further_memory_flat(model_repo: Path) -> None:
    with make_client(model_repo, max_body_bytes=LIMIT) as c:
        sent = [0]
        before = _rss_bytes()
        content_type = (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)
        answer = c.portal.call(  # type: ignore[union-attr]
            _post_stream, c.app, "/v1/models/digits/classify", [content_type], _chunked_multipart(sent)
        )
        growth = _rss_bytes() - before
    assert answer["status"] == 413, answer
    assert b"exceeds the limit of 1048576 bytes (BNFOLD_MAX_BODY_BYTES)" in answer["body"]
    assert sent[0] <= LIMIT + 2 * CHUNK, f"the app read {sent[0]} bytes of a body over a {LIMIT}-byte limit"
    assert growth < 20 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MB"


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """7000x7000 pixels (under the default pixel budget) in a few hundred KB."""
    buf = io.BytesIO()
    img = Image.linear_gradient("L").resize((7000, 7000))
    img.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


async def _classify_while_probing(app: Any, png: bytes) -> tuple[int, float, int]:
    """(status of the classify request, the longest event-loop stall while it ran in s, probes made)."""

    async def one_chunk() -> AsyncIterator[bytes]:
        yield png

    task = asyncio.create_task(
        _post_stream(app, "/v1/models/digits/classify", [(b"content-type", b"image/png")], one_chunk())
    )
    worst, probes = 0.0, 0
    while not task.done():
        started = time.perf_counter()
        await asyncio.sleep(0.002)
        worst = max(worst, time.perf_counter() - started - 0.002)
        probes += 1
    return (await task)["status"], worst, probes


def test_large_image_decodes_off_the_event_loop(model_repo: Path, huge_png: bytes) -> None:
    with make_client(model_repo) as c:
        small = io.BytesIO()
        Image.new("L", (8, 8)).save(small, format="PNG")
        warm = c.post("/v1/models/digits/classify", content=small.getvalue(), headers={"Content-Type": "image/png"})
        assert warm.status_code == 200  # first use: Pillow's plugins load, the decode threads start
        status, worst, probes = c.portal.call(_classify_while_probing, c.app, huge_png)  # type: ignore[union-attr]
        assert status == 200
        assert probes > 20, "the decode was too quick to tell"
        assert worst < 0.05, f"the event loop stalled for {worst * 1000:.0f} ms while the image decoded"
        assert c.get("/v2/health/live").status_code == 200


def test_pixel_budget_is_checked_from_the_header(model_repo: Path, huge_png: bytes) -> None:
    with make_client(model_repo, max_image_pixels=1_000_000) as c:
        started = time.perf_counter()
        r = c.post("/v1/models/digits/classify", content=huge_png, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "7000x7000 pixels exceeds the limit of 1000000 pixels" in r.json()["error"]
        assert "BNFOLD_MAX_IMAGE_PIXELS" in r.json()["error"]
        assert time.perf_counter() - started < 0.5, "refused only after decoding"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def test_real_server_refuses_a_200_mb_chunked_upload_with_flat_memory(model_repo: Path) -> None:
    """The same over loopback: a raw chunked multipart POST, 64 KB chunks made on the fly, stopped as soon as
    the server answers; the server's RSS must not grow with what was sent."""
    srv = ServerProcess(model_repo, "--max-body-bytes", str(LIMIT))
    try:
        srv.wait_ready()
        before = _rss_mb(srv.proc.pid)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/models/digits/classify HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n\r\n"
            )

            def chunk(data: bytes) -> bytes:
                return b"%x\r\n" % len(data) + data + b"\r\n"

            head = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
            sock.sendall(chunk(head))
            block, sent = chunk(b"\x00" * CHUNK), 0
            while sent < UPLOAD and not select.select([sock], [], [], 0)[0]:
                sock.sendall(block)
                sent += CHUNK
            response = sock.recv(65536)
            while not response.endswith(b"}") and (more := sock.recv(65536)):  # the body may come separately
                response += more
        growth = _rss_mb(srv.proc.pid) - before
    finally:
        srv.stop()
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"(BNFOLD_MAX_BODY_BYTES)" in response
    assert sent < UPLOAD, "the server read the whole upload before answering"
    assert growth < 20, f"server RSS grew by {growth:.1f} MB"
