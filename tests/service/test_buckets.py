"""Batch-size buckets: padded batches give bit-identical rows, every bucket is warmed before readiness,
and a bucket list that cannot hold max_batch_size is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from service.buckets import BucketError, bucket_for, parse_buckets, powers_of_two, resolve_buckets
from service.model import load_version
from service.settings import Settings
from tests.service.conftest import direct_logits, make_client
from tests.service.test_providers import FakeCudaSession, fake_cuda, no_cuda  # noqa: F401  (fixtures)


class Recording:
    """Wraps a session and records the batch size of every run."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.sizes: list[int] = []

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def test_bucket_lists() -> None:
    assert powers_of_two(64) == (1, 2, 4, 8, 16, 32, 64)
    assert powers_of_two(48) == (1, 2, 4, 8, 16, 32, 48)
    assert powers_of_two(1) == (1,)
    assert resolve_buckets("auto", on_cuda=True, max_batch_size=16) == (1, 2, 4, 8, 16)
    assert resolve_buckets("auto", on_cuda=False, max_batch_size=16) == ()  # the CPU keeps its speed
    assert resolve_buckets("off", on_cuda=True, max_batch_size=16) == ()
    assert resolve_buckets(" 16, 4,1,4 ", on_cuda=False, max_batch_size=16) == (1, 4, 16)
    assert [bucket_for(n, (1, 4, 16)) for n in (1, 2, 4, 5, 16, 17)] == [1, 4, 4, 16, 16, 17]
    assert parse_buckets("AUTO") == "auto"


def test_bucket_list_that_misses_max_batch_size_is_refused() -> None:
    with pytest.raises(BucketError, match=r"stop at 8, below max_batch_size 16: add 16"):
        resolve_buckets("1,2,4,8", on_cuda=True, max_batch_size=16)
    for bad in ("1,two", "0,4", ""):
        with pytest.raises(BucketError, match="batch buckets"):
            parse_buckets(bad)
    with pytest.raises(ValidationError, match="stop at 32, below max_batch_size 64"):
        Settings(batch_buckets="1,8,32", max_batch_size=64)
    with pytest.raises(ValidationError, match="expected auto, off or comma-separated batch sizes"):
        Settings(batch_buckets="powers")


def test_bucket_list_below_the_models_max_batch_size_stops_the_start(model_repo: Path) -> None:
    """The repository's model has max_batch_size 16 in its config.pbtxt: buckets up to 8 cannot serve it."""
    with (
        pytest.raises(BucketError, match="stop at 8, below max_batch_size 16"),
        make_client(model_repo, batch_buckets="1,2,4,8"),
    ):
        pass


def test_padded_batches_give_bit_identical_rows(model_repo: Path, digits_val: tuple[Any, Any]) -> None:
    model = load_version(model_repo / "digits", 1, "cpu", 0, batch_buckets="1,2,4,8,16")
    assert model.buckets == (1, 2, 4, 8, 16)
    x_all = np.asarray(digits_val[0], np.float32)
    recording = Recording(model.session)
    model.session = recording
    for n in range(1, 17):
        x = x_all[n : 2 * n]
        (padded,) = model.run((x,))
        alone = recording.session.run([model.output_name], {model.input_name: x})[0]
        assert padded.shape == alone.shape == (n, 10)
        assert np.array_equal(padded, alone), f"batch of {n} padded to {bucket_for(n, model.buckets)}"
    ran = recording.sizes  # the reference runs went to the session directly
    assert ran == [bucket_for(n, model.buckets) for n in range(1, 17)] and set(ran) == {1, 2, 4, 8, 16}


def test_every_bucket_is_warmed_before_ready(
    fake_cuda: type[FakeCudaSession],  # noqa: F811
    model_repo: Path,
    digits_val: tuple[Any, Any],
) -> None:
    client = make_client(model_repo)
    manager = client.app.state.manager  # type: ignore[attr-defined]
    fake_cuda.probe = staticmethod(lambda: manager.ready)
    with client:
        assert client.get("/v2/health/ready").status_code == 200
        warm = [(n, ready) for n, ready in fake_cuda.created[-1].runs]
        x = np.asarray(digits_val[0][:3], np.float32)
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        answer = client.post("/v2/models/digits/infer", json=body).json()["outputs"][0]
    assert sorted(n for n, _ in warm) == [1, 2, 4, 8, 16]  # each bucket once
    assert not any(ready for _, ready in warm)  # all of it before the server said ready
    assert fake_cuda.created[-1].runs[-1][0] == 4  # 3 rows ran as bucket 4
    logits = np.asarray(answer["data"], np.float32).reshape(answer["shape"])
    assert np.array_equal(logits, direct_logits(model_repo / "digits" / "1" / "model.onnx", x))
