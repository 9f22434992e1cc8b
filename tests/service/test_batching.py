"""Dynamic batching under concurrency, a full queue, timeouts, and hot-swapping versions without a failure."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.model import ModelVersion
from tests.service.conftest import direct_logits, make_client
from tests.service.test_app import INFER, json_request, logits_of, outcome_count

BATCH_DONE = threading.Event()  # set whenever a (slowed) ONNX Runtime batch has finished


def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition`` (checked every millisecond), failing after ``timeout_s``: a wait, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.001)


@pytest.fixture
def slow_model(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Make every ONNX Runtime batch take ``delay['s']`` seconds longer (the model itself is untouched)."""
    delay = {"s": 0.0}
    real = ModelVersion.run

    def slow_run(self: ModelVersion, batch: np.ndarray) -> np.ndarray:
        time.sleep(delay["s"])  # the model's own run time, not a test waiting
        try:
            return real(self, batch)
        finally:
            BATCH_DONE.set()

    monkeypatch.setattr(ModelVersion, "run", slow_run)
    return delay


def _batch_sizes(metrics_text: str) -> tuple[float, float]:
    """(number of batches, number of samples) from the batch-size histogram."""

    def read(name: str) -> float:
        m = re.search(rf'bnfold_batch_size_{name}\{{model="digits",version="1"\}} (\S+)', metrics_text)
        return float(m.group(1)) if m else 0.0  # a labelled series appears with its first batch

    return read("count"), read("sum")


def test_concurrent_requests_are_batched_and_split_back_exactly(
    model_repo: Path, digits_val: Any, slow_model: dict[str, float]
) -> None:
    x = digits_val[0][:12]
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", x)
    with make_client(model_repo, max_queue_delay_ms=50) as c:
        before = _batch_sizes(c.get("/metrics").text)
        slow_model["s"] = 0.2
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda i: c.post(INFER, content=json_request(x[i : i + 1])), range(12)))
        after = _batch_sizes(c.get("/metrics").text)
    for i, r in enumerate(responses):
        assert r.status_code == 200
        np.testing.assert_allclose(logits_of(r)[0], expected[i], rtol=1e-5, atol=1e-5)
    batches, samples = after[0] - before[0], after[1] - before[1]
    assert samples == 12 and batches < 12, f"{batches} batches for 12 samples: nothing was batched"


def test_multi_sample_requests_merge_and_split(model_repo: Path, digits_val: Any, slow_model: dict[str, float]) -> None:
    x = digits_val[0][:9]
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", x)
    chunks = [(0, 2), (2, 5), (5, 9)]
    with make_client(model_repo, max_queue_delay_ms=50) as c:
        slow_model["s"] = 0.1
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda ab: c.post(INFER, content=json_request(x[ab[0] : ab[1]])), chunks))
    for (a, b), r in zip(chunks, responses, strict=True):
        np.testing.assert_allclose(logits_of(r), expected[a:b], rtol=1e-5, atol=1e-5)


def test_full_queue_answers_503_with_retry_after_then_recovers(
    model_repo: Path, digits_val: Any, slow_model: dict[str, float]
) -> None:
    x = digits_val[0][:1]
    with make_client(model_repo, max_queue_size=1, max_batch_size=1) as c:
        slow_model["s"] = 0.4
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: c.post(INFER, content=json_request(x)), range(6)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes, codes
        rejected = next(r for r in responses if r.status_code == 503)
        assert rejected.headers["Retry-After"] == "1" and "queue is full" in rejected.json()["error"]
        slow_model["s"] = 0.0
        assert c.post(INFER, content=json_request(x)).status_code == 200
        assert outcome_count(c.get("/metrics").text, "rejected") == codes.count(503)


def test_timed_out_request_answers_504_then_recovers(
    model_repo: Path, digits_val: Any, slow_model: dict[str, float]
) -> None:
    x = digits_val[0][:1]
    with make_client(model_repo, request_timeout_s=0.2) as c:
        slow_model["s"] = 0.6
        BATCH_DONE.clear()
        r = c.post(INFER, content=json_request(x))
        assert r.status_code == 504 and "timed out after 0.2 s" in r.json()["error"]
        assert outcome_count(c.get("/metrics").text, "timeout") == 1.0
        slow_model["s"] = 0.0
        assert BATCH_DONE.wait(10), "the timed-out batch never finished"
        assert c.post(INFER, content=json_request(x)).status_code == 200


def test_corrupt_new_version_keeps_the_old_one_serving(model_repo: Path, tmp_path: Path, digits_val: Any) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    x = digits_val[0][:1]
    auth = {"X-API-Key": "k"}
    with make_client(repo, api_key="k") as c:
        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                r = c.post(INFER, content=json_request(x))
                results.append((r.status_code, r.json().get("model_version", r.text)))

        worker = threading.Thread(target=hammer)
        worker.start()
        until(lambda: len(results) >= 3)  # the hammer is answered before the corrupt version appears
        (repo / "digits" / "2").mkdir()
        (repo / "digits" / "2" / "model.onnx").write_bytes(b"this is not an onnx file")
        r = c.post("/v2/repository/models/digits/load", headers=auth)
        answered = len(results)
        until(lambda: len(results) >= answered + 3)  # and keeps being answered after the failed load
        stop.set()
        worker.join()
        assert r.status_code == 400 and "cannot load" in r.json()["error"]
        assert results and all(code == 200 and version == "1" for code, version in results), set(results)
        index = c.post("/v2/repository/index", headers=auth).json()[0]
        assert index["state"] == "READY" and index["loaded_versions"] == ["1"] and "last load failed" in index["reason"]
        # a good version 2 replaces version 1 once it is loaded and warm
        shutil.copy(repo / "digits" / "1" / "model.onnx", repo / "digits" / "2" / "model.onnx")
        assert c.post("/v2/repository/models/digits/load", headers=auth).status_code == 200
        assert c.post(INFER, content=json_request(x)).json()["model_version"] == "2"
