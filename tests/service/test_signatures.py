"""Models of any tensor signature, exported with ``bnfold-export --onnx`` and served to the unmodified
tritonclient over HTTP and gRPC: two inputs, logits plus an embedding, a feature map, uint8 NHWC pixels, and
INT64/BOOL inputs with FP16/INT64/BOOL outputs.

Every output comes back (none dropped) and equals a plain ONNX Runtime run of the written file; requests to a
several-input model batch together (every input concatenated, every output split back); a missing, unknown
or mistyped input is a 400 / INVALID_ARGUMENT naming it; classification and ``/classify`` apply only where an
output is (N, classes), and say so otherwise.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.cli import main as export_main
from service.batching import Batcher
from service.metrics import Metrics
from service.model import load_version
from tests.export.signatures import MODELS
from tests.service.test_grpc import GrpcServerProcess, started

V2 = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}
CLASSES = ("ants", "bees", "cats")


def _images(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signatures")
    for name, build in MODELS.items():
        onnx.save(build(), str(root / f"{name}.onnx"))
        argv = ["--onnx", str(root / f"{name}.onnx"), "--repository", str(root / "repo"), "--max-batch-size", "8"]
        if name == "uint8_nhwc":
            argv += ["--images", str(_images(root / "imgs")), "--layout", "NHWC"]
        assert export_main(argv) == 0, name
    return root / "repo"


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcServerProcess]:
    srv = started(repo)
    yield srv
    srv.stop()


def _session(repo: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def _inputs(session: ort.InferenceSession, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = (n, *arg.shape[1:])
        if arg.type == "tensor(uint8)":
            feeds[arg.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif arg.type == "tensor(int64)":
            feeds[arg.name] = rng.integers(-50, 50, shape, dtype=np.int64)
        elif arg.type == "tensor(bool)":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _expected(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _http_inputs(feeds: dict[str, np.ndarray], binary: bool) -> list[Any]:
    inputs = []
    for name, x in feeds.items():
        tensor = httpclient.InferInput(name, list(x.shape), V2[x.dtype])
        tensor.set_data_from_numpy(x, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _grpc_inputs(feeds: dict[str, np.ndarray]) -> list[Any]:
    inputs = []
    for name, x in feeds.items():
        tensor = grpcclient.InferInput(name, list(x.shape), V2[x.dtype])
        tensor.set_data_from_numpy(x)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_output_over_http_and_grpc_matches_onnx_runtime(name: str, repo: Path, server: GrpcServerProcess) -> None:
    session = _session(repo, name)
    feeds = _inputs(session, 3)
    expected = _expected(session, feeds)
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = server.client()
    try:
        answers = [
            http.infer(name, _http_inputs(feeds, binary=True)),
            http.infer(name, _http_inputs(feeds, binary=False)),  # JSON tensors
            grpc.infer(name, _grpc_inputs(feeds)),
        ]
        for result in answers:
            for out, want in expected.items():  # no output requested: every output comes back
                got = result.as_numpy(out)
                assert got is not None, f"{name}: output {out!r} dropped"
                assert got.dtype == want.dtype
                if want.dtype.kind == "f":
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
                else:
                    np.testing.assert_array_equal(got, want)
        meta = httpx.get(f"{server.url}/v2/models/{name}").json()
        assert [t["name"] for t in meta["inputs"]] == list(feeds)
        assert [t["name"] for t in meta["outputs"]] == list(expected)
        config = grpc.get_model_config(name).config
        assert [o.name for o in config.output] == list(expected)
    finally:
        http.close()
        grpc.close()


def test_requested_outputs_and_classification_where_it_applies(repo: Path, server: GrpcServerProcess) -> None:
    session = _session(repo, "logits_and_embedding")
    feeds = _inputs(session, 2, seed=1)
    expected = _expected(session, feeds)
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = server.client()
    try:
        http_out = [
            httpclient.InferRequestedOutput("embedding"),
            httpclient.InferRequestedOutput("logits", class_count=2),
        ]
        grpc_out = [
            grpcclient.InferRequestedOutput("embedding"),
            grpcclient.InferRequestedOutput("logits", class_count=2),
        ]
        for result in (
            http.infer("logits_and_embedding", _http_inputs(feeds, True), outputs=http_out),
            grpc.infer("logits_and_embedding", _grpc_inputs(feeds), outputs=grpc_out),
        ):
            np.testing.assert_allclose(result.as_numpy("embedding"), expected["embedding"], rtol=1e-5, atol=1e-6)
            top = [[int(v.decode().split(":")[1]) for v in row] for row in result.as_numpy("logits")]
            assert top == np.argsort(-expected["logits"], axis=1)[:, :2].tolist()
        # classification of a feature map: refused, naming the output and its shape
        fm = _session(repo, "feature_map")
        fm_feeds = _inputs(fm, 1)
        with pytest.raises(InferenceServerException, match=r"output 'y': classification needs a floating-point \(N, "):
            http.infer(
                "feature_map",
                _http_inputs(fm_feeds, True),
                outputs=[httpclient.InferRequestedOutput("y", class_count=1)],
            )
        with pytest.raises(InferenceServerException) as info:
            grpc.infer(
                "feature_map", _grpc_inputs(fm_feeds), outputs=[grpcclient.InferRequestedOutput("y", class_count=1)]
            )
        assert "INVALID_ARGUMENT" in str(info.value.status()) and "shape [-1, 8, 10, 10]" in str(info.value.message())
    finally:
        http.close()
        grpc.close()


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("two_inputs", "drop extra", r"needs input 'extra' \(FP32, shape \[-1, 4\]\); the request does not give it"),
        ("two_inputs", "rename extra", r"has no input 'side'; its inputs are 'image' \(FP32, shape \[-1, 3, 8, 8\]\)"),
        ("uint8_nhwc", "float pixels", r"input 'pixels': datatype FP32, expected UINT8"),
        ("two_inputs", "batch sizes", r"inputs hold different batch sizes \('image' 2, 'extra' 1\)"),
    ],
)
def test_bad_inputs_are_4xx_naming_the_field(
    name: str, change: str, message: str, repo: Path, server: GrpcServerProcess
) -> None:
    feeds = _inputs(_session(repo, name), 2)
    if change == "drop extra":
        del feeds["extra"]
    elif change == "rename extra":
        feeds["side"] = feeds.pop("extra")
    elif change == "float pixels":
        feeds["pixels"] = feeds["pixels"].astype(np.float32)
    else:
        feeds["extra"] = feeds["extra"][:1]
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = server.client()
    try:
        with pytest.raises(InferenceServerException, match=message):
            http.infer(name, _http_inputs(feeds, True))
        raw = httpx.post(f"{server.url}/v2/models/{name}/infer", json={"inputs": [
            {"name": k, "datatype": V2[v.dtype], "shape": list(v.shape), "data": v.ravel().tolist()}
            for k, v in feeds.items()
        ]})  # fmt: skip
        assert raw.status_code == 400 and "error" in raw.json()
        with pytest.raises(InferenceServerException, match=message) as info:
            grpc.infer(name, _grpc_inputs(feeds))
        assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    finally:
        http.close()
        grpc.close()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_serves_the_uint8_image_model_and_explains_the_others(repo: Path, server: GrpcServerProcess) -> None:
    pixels = np.random.default_rng(9).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    answer = httpx.post(f"{server.url}/v1/models/uint8_nhwc/classify", files={"file": ("p.png", _png(pixels))})
    assert answer.status_code == 200, answer.text
    top = answer.json()["predictions"][0]["top"][0]
    logits = _session(repo, "uint8_nhwc").run(None, {"pixels": pixels[None]})[0][0]
    assert top["index"] == int(np.argmax(logits)) and top["label"] == CLASSES[top["index"]]
    for name, reason in (
        ("two_inputs", "it takes 2 inputs (image, extra), not one image"),
        ("feature_map", "no output is (N, classes)"),
    ):
        refused = httpx.post(f"{server.url}/v1/models/{name}/classify", files={"file": ("p.png", _png(pixels))})
        assert refused.status_code == 400 and reason in refused.json()["error"], refused.text


def test_requests_to_a_two_input_model_batch_together(repo: Path) -> None:
    """Three requests of 1, 2 and 3 samples: the first runs alone, the other two as one batch of 5 whose
    inputs are concatenated together and whose outputs are split back, each request getting its own rows."""
    model = load_version(repo / "two_inputs", 1, "cpu", 1)
    sizes: list[int] = []
    run = model.run

    def recording(batch: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        sizes.append(len(batch[0]))
        assert len({len(x) for x in batch}) == 1
        return run(batch)

    model.run = recording  # type: ignore[method-assign]
    session = _session(repo, "two_inputs")
    feeds = [_inputs(session, n, seed=n) for n in (1, 2, 3)]

    async def scenario() -> list[list[np.ndarray]]:
        batcher = Batcher(model, 16, Metrics().version("two_inputs", "1"))
        tasks = [asyncio.create_task(batcher.infer((f["image"], f["extra"]), 10)) for f in feeds]
        await asyncio.sleep(0)
        batcher.start()
        answers = [await t for t in tasks]
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert sizes == [1, 5]
    for f, answer in zip(feeds, answers, strict=True):
        np.testing.assert_allclose(answer[0], session.run(None, f)[0], rtol=1e-5, atol=1e-6)


def test_a_model_without_bnfold_metadata_finds_its_labelled_output(tmp_path: Path) -> None:
    """write_model copies a plain ONNX file (no bnfold.* metadata): the server puts labels.txt on the first
    floating-point (N, classes) output, and on none when there is no such output."""
    from export.repository.writer import write_model

    for name in ("logits_and_embedding", "feature_map"):
        onnx.save(MODELS[name](), str(tmp_path / f"{name}.onnx"))
    write_model(tmp_path / "repo", "two", tmp_path / "logits_and_embedding.onnx", list("abcde"))
    write_model(tmp_path / "repo", "fm", tmp_path / "feature_map.onnx", [])
    two = load_version(tmp_path / "repo" / "two", 1, "cpu", 1)
    assert two.labels_output == "logits" and two.labels == list("abcde") and two.image_classifier() is None
    assert [(t.name, t.datatype, t.shape) for t in two.outputs] == [
        ("logits", "FP32", (5,)),
        ("embedding", "FP32", (4,)),
    ]
    fm = load_version(tmp_path / "repo" / "fm", 1, "cpu", 1)
    assert fm.labels_output is None and fm.labels == []
    assert fm.image_classifier() == "no output is (N, classes) (outputs: 'y' (FP32, shape [-1, 8, 10, 10]))"
