"""The app in-process: the v2 endpoints, images, model control, metrics, and every bad input answered 4xx."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import direct_logits, make_client

INFER = "/v2/models/digits/infer"


def json_request(x: np.ndarray, **extra: Any) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}], **extra}
    )


def binary_request(x: np.ndarray, **extra: Any) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            **extra,
        }
    )
    return header + x.astype(np.float32).tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def png_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(x * 255, 0, 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def outcome_count(metrics_text: str, outcome: str, model: str = "digits", version: str = "1") -> float:
    """The value of bnfold_requests_total for one outcome (its series exists, at 0, from the model's load)."""
    line = f'bnfold_requests_total{{model="{model}",outcome="{outcome}",version="{version}"}} '
    return float(metrics_text.split(line, 1)[1].split()[0])


def logits_of(response: Any) -> np.ndarray:
    doc = response.json()
    out = doc["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    meta = client.get("/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert client.get("/v2/models/digits/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/digits/versions/1/ready").json()["ready"] is True
    config = client.get("/v2/models/digits/config").json()
    assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == [1, 8, 8]
    assert "/v2/models/{model}/infer" in client.get("/openapi.json").json()["paths"]


def test_json_and_binary_inference_match_onnxruntime(client: TestClient, model_repo: Path, digits_val: Any) -> None:
    x = digits_val[0][:5]
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", x)
    r = client.post(INFER, content=json_request(x, id="abc"))
    assert r.status_code == 200 and r.json()["id"] == "abc"
    np.testing.assert_allclose(logits_of(r), expected, rtol=1e-5, atol=1e-6)
    body, headers = binary_request(x, parameters={"binary_data_output": True})
    r = client.post(INFER, content=body, headers=headers)
    n = int(r.headers["Inference-Header-Content-Length"])
    np.testing.assert_allclose(np.frombuffer(r.content[n:], np.float32).reshape(5, 10), expected, rtol=1e-5, atol=1e-6)
    gz = client.post(INFER, content=gzip.compress(json_request(x)), headers={"Content-Encoding": "gzip"})
    np.testing.assert_allclose(logits_of(gz), expected, rtol=1e-5, atol=1e-6)


def test_classification_extension(client: TestClient, digits_val: Any) -> None:
    x = digits_val[0][:3]
    r = client.post(INFER, content=json_request(x, outputs=[{"name": "logits", "parameters": {"classification": 2}}]))
    out = r.json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [3, 2]
    score, index, label = out["data"][0].split(":")
    assert (
        index == label
        and 0 <= int(index) < 10
        and float(score)
        == pytest.approx(logits_of(client.post(INFER, content=json_request(x))).max(axis=1)[0], abs=1e-5)
    )


def test_classify_images_multipart_raw_and_batch(client: TestClient, model_repo: Path) -> None:
    """Images are preprocessed exactly as training did: same answer as the model on the dataset's tensors."""
    from sklearn.datasets import load_digits

    from training.data import load_dataset

    raw = load_digits().images / 16.0  # the dataset's own [0, 1] scaling
    norm = load_dataset("digits").normalization
    tensors = ((raw[:10, None] - norm.mean[0]) / norm.std[0]).astype(np.float32)
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", tensors)
    probs = np.exp(expected - expected.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    pngs = [png_bytes(raw[i]) for i in range(10)]
    r = client.post(
        "/v1/models/digits/classify", files=[("file", (f"{i}.png", pngs[i], "image/png")) for i in range(10)]
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 10 and len(preds[0]["top"]) == 3 and preds[3]["filename"] == "3.png"
    for pred, p in zip(preds, probs, strict=True):
        assert pred["top"][0]["index"] == int(p.argmax())
        # PNG holds 8 bits: the 16-level digits survive with at most half a step of rounding
        assert pred["top"][0]["probability"] == pytest.approx(float(p.max()), abs=2e-2)
    single = client.post("/v1/models/digits/classify?top_k=1", content=pngs[0], headers={"Content-Type": "image/png"})
    assert single.json()["predictions"][0]["top"][0]["label"] == preds[0]["top"][0]["label"]


BAD_INPUTS = [
    ("malformed json", b"{not json", {}, 400, "not valid JSON"),
    ("wrong input name", b'{"inputs":[{"name":"x","shape":[1,1,8,8],"datatype":"FP32","data":[]}]}', {}, 400, None),
    (
        "wrong datatype",
        orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "INT32", "data": [0] * 64}]}),
        {},
        400,
        "expected FP32",
    ),
    (
        "wrong shape",
        orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 7], "datatype": "FP32", "data": [0.0] * 56}]}),
        {},
        400,
        "expected [-1, 1, 8, 8]",
    ),
    (
        "count mismatch",
        orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 63}]}),
        {},
        400,
        "holds 63 values",
    ),
    (  # JSON has no NaN: orjson writes it as null, which is no FP32 value (not "NaN or Inf")
        "null",
        orjson.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [float("nan")] + [0.0] * 63}
                ]
            }
        ),
        {},
        400,
        "holds null, which is not a FP32 value",
    ),
    ("truncated binary", None, {}, 400, "truncated"),
    ("bad header length", b'{"inputs":[]}', {"Inference-Header-Content-Length": "x"}, 400, "must be an integer"),
    (
        "too many samples",
        orjson.dumps(
            {"inputs": [{"name": "input", "shape": [17, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64 * 17}]}
        ),
        {},
        400,
        "at most 16",
    ),
    (
        "unknown output",
        orjson.dumps(
            {
                "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
                "outputs": [{"name": "probs"}],
            }
        ),
        {},
        400,
        "no output 'probs'",
    ),
    ("bad encoding", b"xx", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_get_4xx_and_server_keeps_answering(client: TestClient, digits_val: Any, case: tuple) -> None:
    _, body, headers, status, message = case
    if body is None:
        good, headers = binary_request(digits_val[0][:1])
        body = good[:-10]
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    if message:
        assert message in r.json()["error"]
    ok = client.post(INFER, content=json_request(digits_val[0][:1]))
    assert ok.status_code == 200


def test_unknown_model_version_and_route(client: TestClient, digits_val: Any) -> None:
    r = client.post("/v2/models/nope/infer", content=json_request(digits_val[0][:1]))
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = client.post("/v2/models/digits/versions/7/infer", content=json_request(digits_val[0][:1]))
    assert r.status_code == 404 and "no loaded version '7'" in r.json()["error"]
    assert client.get("/v2/nothing").json() == {"error": "Not Found"}


def test_body_limit_and_corrupt_images(model_repo: Path, digits_val: Any) -> None:
    with make_client(model_repo, max_body_bytes=4096) as c:
        r = c.post(INFER, content=json_request(digits_val[0][:16]))
        assert r.status_code == 413 and "exceeds the limit of 4096" in r.json()["error"]
        r = c.post("/v1/models/digits/classify", files=[("file", ("x.png", b"\x89PNG broken", "image/png"))])
        assert r.status_code == 415 and r.json()["error"] == "x.png is not a PNG or JPEG image", r.text
        r = c.post("/v1/models/digits/classify", content=b"GIF89a", headers={"Content-Type": "image/gif"})
        assert r.status_code == 415
        assert c.post(INFER, content=json_request(digits_val[0][:1])).status_code == 200


def test_non_finite_refused_by_default(client: TestClient) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 3, 3] = np.nan
    body, headers = binary_request(x)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 400 and "NaN or Inf" in r.json()["error"] and "BNFOLD_ALLOW_NON_FINITE" in r.json()["error"]


def test_non_finite_allowed_when_configured(model_repo: Path) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 0, 0] = np.inf
    with make_client(model_repo, allow_non_finite=True) as c:
        assert c.post(INFER, content=binary_request(x)[0], headers=binary_request(x)[1]).status_code == 200


def test_model_control_needs_the_key(model_repo: Path) -> None:
    with make_client(model_repo) as c:
        assert c.post("/v2/repository/index").status_code == 403
    with make_client(model_repo, api_key="s3cret") as c:
        assert c.post("/v2/repository/index").status_code == 401
        assert c.post("/v2/repository/index", headers={"X-API-Key": "wrong"}).status_code == 401
        index = c.post("/v2/repository/index", headers={"Authorization": "Bearer s3cret"}).json()
        assert index == [{"name": "digits", "state": "READY", "reason": "", "version": "1", "loaded_versions": ["1"]}]
        auth = {"X-API-Key": "s3cret"}
        assert c.post("/v2/repository/models/digits/unload", headers=auth).status_code == 200
        assert c.get("/v2/models/digits/ready").status_code == 503
        assert c.post("/v2/repository/models/digits/load", headers=auth).status_code == 200
        assert c.get("/v2/models/digits/ready").status_code == 200


def test_metrics_exposition(client: TestClient, digits_val: Any) -> None:
    client.post(INFER, content=json_request(digits_val[0][:2]))
    client.post(INFER, content=b"{")
    text = client.get("/metrics").text
    assert outcome_count(text, "success") == 1.0
    assert outcome_count(text, "bad_request") == 1.0
    for name in (
        "bnfold_request_seconds_bucket",
        "bnfold_queue_seconds_bucket",
        "bnfold_compute_seconds_bucket",
        "bnfold_batch_size_bucket",
        "bnfold_queue_depth",
    ):
        assert name in text
