"""Issue 10's defects 1 and 6-10, one test each: every one failed on the code before the fix."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.types import ASGIApp, Receive, Scope, Send

from service.model import ModelVersion
from tests.service.conftest import make_client
from tests.service.test_app import INFER, json_request, png_bytes

HEAD = b'{"inputs":[{"name":"input","datatype":"FP32",'
ZEROS_63 = b",0" * 63


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (HEAD + b'"shape":[1,1,8,8],"data":[1000000000000000000000000000000' + ZEROS_63 + b"]}]}", "64 bits"),
        (HEAD + b'"shape":[1000000000000000000000000000000,1,8,8],"data":[0]}]}', "64 bits"),
        (HEAD + b'"shape":[' + b",".join([b"1"] * 1000) + b'],"data":[0]}]}', "1000 dimensions; the limit (MAX_RANK)"),
        (HEAD + b'"shape":[1],"data":' + b"[" * 5000 + b"0" + b"]" * 5000 + b"}]}", "nested deeper than"),
        (HEAD + b'"shape":[100000,100000,100000],"parameters":{"binary_data_size":4}}]}', "more than a body of"),
    ],
    ids=["huge-number", "huge-dimension", "1000-dimensions", "5000-deep", "huge-element-count"],
)
def test_valid_json_beyond_the_limits_is_400_not_500(client: TestClient, body: bytes, message: str) -> None:
    """Defect 1."""
    r = client.post(INFER, content=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_failed_load_of_an_unknown_name_leaves_no_entry(model_repo: Path) -> None:
    """Defect 6."""
    auth = {"X-API-Key": "k"}
    with make_client(model_repo, api_key="k") as c:
        r = c.post("/v2/repository/models/0/load", headers=auth)
        assert r.status_code == 404 and "no model '0'" in r.json()["error"]
        assert c.get("/v2/models/0").status_code == 404
        names = [row["name"] for row in c.post("/v2/repository/index", headers=auth).json()]
        assert names == ["digits"]


def test_cold_start_falls_back_to_the_newest_good_version(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 7: a corrupt version 2 no longer stops the server; version 1 serves, and everyone is told why."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    (repo / "digits" / "2").mkdir()
    (repo / "digits" / "2" / "model.onnx").write_bytes(b"not an onnx file")
    caplog.set_level(logging.WARNING, logger="service.manager")
    with make_client(repo, api_key="k") as c:
        assert c.get("/v2/health/ready").status_code == 200
        meta = c.get("/v2/models/digits").json()
        assert meta["versions"] == ["1"] and meta["parameters"]["version"] == "1"
        assert "serving version 1 because newer version 2 failed" in meta["parameters"]["load_note"]
        row = c.post("/v2/repository/index", headers={"X-API-Key": "k"}).json()[0]
        assert row["state"] == "READY" and row["loaded_versions"] == ["1"] and "version 2 failed" in row["reason"]
        assert c.post(INFER, content=json_request(np.zeros((1, 1, 8, 8)))).json()["model_version"] == "1"
    assert any("serving version 1 because newer version 2 failed" in r.getMessage() for r in caplog.records)


def test_openapi_references_all_resolve(client: TestClient) -> None:
    """Defect 8: every ``$ref`` points at a defined component."""
    doc = client.get("/openapi.json").json()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    schemas = doc["components"]["schemas"]
    assert "#/components/schemas/OutputParameters" in refs
    missing = sorted({r for r in refs if r.removeprefix("#/components/schemas/") not in schemas})
    assert not missing, missing
    assert "requestBody" in doc["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]


def test_versions_are_canonical_decimal_integers(client: TestClient) -> None:
    """Defect 9: '01' and an Arabic-Indic one no longer serve version 1."""
    body = json_request(np.zeros((1, 1, 8, 8)))
    assert client.post("/v2/models/digits/versions/1/infer", content=body).status_code == 200
    for version in ("01", "\u0661", "+1", "1.0"):
        r = client.post(f"/v2/models/digits/versions/{version}/infer", content=body)
        assert r.status_code == 400 and "decimal integer" in r.json()["error"], (version, r.text)
        assert client.get(f"/v2/models/digits/versions/{version}").status_code == 400


@pytest.mark.parametrize(
    ("data", "shown"), [('"1"', '"1"'), ("true", "true"), ("null", "null")], ids=["string", "bool", "null"]
)
def test_fp32_data_holds_numbers_only(client: TestClient, data: str, shown: str) -> None:
    """Defect 9: strings and booleans were taken as numbers, null was reported as NaN."""
    body = HEAD + b'"shape":[1,1,8,8],"data":[' + data.encode() + ZEROS_63 + b"]}]}"
    r = client.post(INFER, content=body)
    assert r.status_code == 400 and f"holds {shown}, which is not a FP32 value" in r.json()["error"]


def test_image_route_is_strict_and_leaks_nothing(client: TestClient) -> None:
    """Defect 9: only 'file' fields; a corrupt PNG is 415; no internal object names in messages."""
    png = png_bytes(np.zeros((8, 8)))
    url = "/v1/models/digits/classify"
    assert client.post(url, files=[("file", ("a.png", png, "image/png"))]).status_code == 200
    r = client.post(url, files=[("image", ("a.png", png, "image/png"))])
    assert r.status_code == 400 and "unexpected multipart field 'image'" in r.json()["error"]
    broken = png[:40] + b"\x00" * 30  # a real PNG header, then garbage where the pixels should be
    for payload in (b"GIF89a not an image at all", broken):
        r = client.post(url, files=[("file", ("x.png", payload, "image/png"))])
        assert r.status_code == 415, r.text
        assert "x.png is not a" in r.json()["error"] and "0x" not in r.json()["error"], r.text


def test_inference_goes_through_middleware_and_500s_carry_a_request_id(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 10: one route for inference, inside the middleware stack; one error policy."""
    seen: list[str] = []

    class Count:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    settings_client = make_client(model_repo)
    settings_client.app.add_middleware(Count)  # type: ignore[attr-defined]
    body = json_request(np.zeros((1, 1, 8, 8)))
    with settings_client as c:
        assert c.post(INFER, content=body).status_code == 200
        assert INFER in seen
        monkeypatch.setattr(ModelVersion, "run", lambda self, x: 1 / 0)
        caplog.set_level(logging.ERROR)
        for url, kwargs in ((INFER, {"content": body}), ("/v1/models/digits/classify", {"files": _one_png()})):
            r = c.post(url, **kwargs)  # type: ignore[arg-type]
            request_id = r.headers.get("X-Request-Id", "")
            assert r.status_code == 500 and len(request_id) == 16, r.text
            assert r.json() == {"error": f"internal server error (request id {request_id})"}
            assert any(request_id in rec.getMessage() and rec.exc_info for rec in caplog.records)


def _one_png() -> list[tuple[str, tuple[str, bytes, str]]]:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    return [("file", ("a.png", buf.getvalue(), "image/png"))]
