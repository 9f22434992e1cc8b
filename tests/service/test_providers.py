"""The CUDA path with the provider mocked at the ONNX Runtime boundary, and CUDA options refused without CUDA.

``FakeCudaSession`` stands in for ``onnxruntime.InferenceSession``: it computes on a real CPU session but
reports the providers and provider options it was asked for, as ONNX Runtime does on a GPU machine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import service.providers as providers
from service.model import load_version
from service.providers import CPU, CUDA, CudaOptions, ProviderError, cuda_options
from service.settings import Settings
from tests.service.conftest import ServerProcess, make_client

REAL_SESSION = ort.InferenceSession
ROOT = Path(__file__).resolve().parents[2]


class FakeCudaSession:
    """A CPU session that says it runs on CUDA with the options it was given; records every batch it runs."""

    created: ClassVar[list[FakeCudaSession]] = []
    probe: ClassVar[Callable[[], Any]] = staticmethod(lambda: None)  # called at each run, e.g. to read readiness

    def __init__(self, path: str, options: Any = None, providers: list[Any] | None = None, **_: Any) -> None:
        self.requested = list(providers or [])
        self.inner = REAL_SESSION(path, options, providers=[CPU])
        self.runs: list[tuple[int, Any]] = []
        FakeCudaSession.created.append(self)

    def _cuda(self) -> dict[str, str] | None:
        for entry in self.requested:
            if entry == CUDA:
                return {}
            if isinstance(entry, tuple) and entry[0] == CUDA:
                return dict(entry[1])
        return None

    def get_providers(self) -> list[str]:
        return [CUDA, CPU] if self._cuda() is not None else [CPU]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        cuda = self._cuda()
        return {CUDA: cuda, CPU: {}} if cuda is not None else {CPU: {}}

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.runs.append((len(next(iter(feeds.values()))), FakeCudaSession.probe()))
        return self.inner.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeCudaSession]]:
    """A machine whose ONNX Runtime offers a usable CUDA provider."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    monkeypatch.setattr(providers, "_resolved", {})
    FakeCudaSession.created = []
    yield FakeCudaSession
    FakeCudaSession.probe = staticmethod(lambda: None)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose ONNX Runtime offers no CUDA provider."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    monkeypatch.setattr(providers, "_resolved", {})


def test_cuda_options_reach_onnx_runtime(fake_cuda: type[FakeCudaSession], model_repo: Path) -> None:
    options = CudaOptions(device_id=1, cudnn_conv_algo_search="HEURISTIC", gpu_mem_limit=2**30)
    model = load_version(model_repo / "digits", 1, "auto", 0, cuda=options)
    session = fake_cuda.created[-1]
    assert session.requested == [
        (
            CUDA,
            {
                "device_id": "1",
                "cudnn_conv_algo_search": "HEURISTIC",
                "arena_extend_strategy": "kSameAsRequested",
                "gpu_mem_limit": str(2**30),
            },
        ),
        CPU,
    ]
    assert model.provider == CUDA and model.provider_options["gpu_mem_limit"] == str(2**30)


def test_cuda_defaults_when_nothing_is_set(fake_cuda: type[FakeCudaSession], model_repo: Path) -> None:
    model = load_version(model_repo / "digits", 1, "auto", 0)
    assert model.provider_options == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kSameAsRequested",
    }


def test_settings_carry_cuda_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cuda_options(Settings()) == CudaOptions()  # nothing set: bnfold's defaults, nothing explicit
    with pytest.raises(ValidationError, match="BNFOLD_CUDA_DEVICE_ID set together with BNFOLD_PROVIDERS=cpu"):
        Settings(providers="cpu", cuda_device_id=0)
    monkeypatch.setenv("BNFOLD_CUDA_GPU_MEM_LIMIT", "1073741824")
    monkeypatch.setenv("BNFOLD_CUDA_CUDNN_CONV_ALGO_SEARCH", "HEURISTIC")
    options = cuda_options(Settings())
    assert options.gpu_mem_limit == 2**30 and options.cudnn_conv_algo_search == "HEURISTIC"
    assert options.explicit == ("cudnn_conv_algo_search", "gpu_mem_limit")
    with pytest.raises(ValidationError, match="cuda_arena_extend_strategy"):
        Settings(cuda_arena_extend_strategy="grow")  # type: ignore[arg-type]


def test_cuda_options_without_cuda_refuse_to_start(no_cuda: None, model_repo: Path) -> None:
    with (
        pytest.raises(ProviderError, match="BNFOLD_CUDA_DEVICE_ID set, but CUDA is not usable"),
        make_client(model_repo, cuda_device_id=0),
    ):
        pass
    with (
        pytest.raises(ProviderError, match="BNFOLD_PROVIDERS=cuda but CUDA is not usable"),
        make_client(model_repo, providers="cuda"),
    ):
        pass


def test_server_with_cuda_options_on_this_cpu_machine_does_not_start(model_repo: Path) -> None:
    """No mock: this machine has no GPU, so the real probe finds CUDA unusable and the server exits."""
    srv = ServerProcess(model_repo, env={"BNFOLD_CUDA_GPU_MEM_LIMIT": "1000000"})
    try:
        with pytest.raises(RuntimeError, match="server exited") as err:
            srv.wait_ready(timeout=120)
        assert "BNFOLD_CUDA_GPU_MEM_LIMIT set, but CUDA is not usable on this machine" in str(err.value)
    finally:
        srv.stop()


def test_metadata_and_metrics_show_provider_and_options(fake_cuda: type[FakeCudaSession], model_repo: Path) -> None:
    with make_client(model_repo, cuda_gpu_mem_limit=123456789) as client:
        execution = client.get("/v2/models/digits").json()["parameters"]["execution"]
        metrics = client.get("/metrics").text
    assert execution["provider"] == CUDA
    assert execution["provider_options"]["gpu_mem_limit"] == "123456789"
    assert execution["batch_buckets"] == [1, 2, 4, 8, 16]  # auto on CUDA: powers of two up to max_batch_size
    assert execution["lone_request_session"] is None  # the GPU runs the model: no CPU threads to give a client
    line = next(row for row in metrics.splitlines() if row.startswith("bnfold_model_info{"))
    assert 'provider="CUDAExecutionProvider"' in line and "123456789" in line
    assert 'batch_buckets="1,2,4,8,16"' in line and line.endswith(" 1.0")


def test_cpu_keeps_buckets_off_by_default(no_cuda: None, model_repo: Path) -> None:
    with make_client(model_repo) as client:
        execution = client.get("/v2/models/digits").json()["parameters"]["execution"]
        metrics = client.get("/metrics").text
    session = {"intra_op_num_threads": "0", "session.force_spinning_stop": "1", "session.intra_op.allow_spinning": "1"}
    lone = session | {"session.force_spinning_stop": "0"}  # the lone-request session spins between runs
    assert execution == {
        "provider": CPU,
        "provider_options": {},
        "session_options": session,
        "lone_request_session": lone,
        "batch_buckets": [],
    }
    assert 'batch_buckets="off"' in metrics and 'provider="CPUExecutionProvider"' in metrics


def test_gpu_bench_says_no_cuda_and_exits_0() -> None:
    """benchmarks/gpu_bench.py on this CPU-only machine: one line saying so, exit status 0, no figures."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "CUDA is not usable on this machine" in out.stdout


def test_gpu_bench_cuda_paths_run_with_the_provider_mocked(
    fake_cuda: type[FakeCudaSession], model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_bench

    path = model_repo / "digits" / "1" / "model.onnx"
    assert gpu_bench.cuda_usable(path)
    rates = gpu_bench.ort_throughput(path, (1, 8, 8), batches=(1, 4), seconds=0.05)
    assert set(rates) == {1, 4} and all(r > 0 for r in rates.values())
    session = fake_cuda.created[-1]
    assert session.requested[0][0] == CUDA and {n for n, _ in session.runs} == {1, 4}


@pytest.mark.parametrize(
    ("setting", "allow", "stop"),
    [(None, "1", "1"), ("run", "1", "1"), ("always", "1", "0"), ("off", "0", None)],
)
def test_intra_op_spinning_reaches_the_served_session(
    model_repo: Path, setting: str | None, allow: str, stop: str | None
) -> None:
    """BNFOLD_INTRA_OP_SPINNING (default run) becomes ONNX Runtime's config of the session that serves, and
    the model metadata and /metrics say what is in force (with BNFOLD_INTRA_OP_THREADS)."""
    overrides: dict[str, object] = {"intra_op_threads": 2}
    if setting is not None:
        overrides["intra_op_spinning"] = setting
    with make_client(model_repo, **overrides) as client:
        session = client.app.state.manager.get("digits").model.session  # type: ignore[attr-defined]
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
        if stop is not None:
            assert options.get_session_config_entry("session.force_spinning_stop") == stop
        shown = client.get("/v2/models/digits").json()["parameters"]["execution"]["session_options"]
        metrics = client.get("/metrics").text
    expected = {"intra_op_num_threads": "2", "session.intra_op.allow_spinning": allow}
    assert shown == expected | ({} if stop is None else {"session.force_spinning_stop": stop})
    line = next(row for row in metrics.splitlines() if row.startswith("bnfold_model_info{"))
    assert f'\\"session.intra_op.allow_spinning\\": \\"{allow}\\"' in line, line
    with pytest.raises(ValidationError, match="intra_op_spinning"):
        Settings(intra_op_spinning="sometimes")  # type: ignore[arg-type]


SPINS = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "0"}
OFF = {"session.intra_op.allow_spinning": "0"}


@pytest.mark.parametrize(
    ("overrides", "workers", "expected"),
    [
        ({}, 1, {"intra_op_num_threads": "0"} | SPINS),  # one worker: ONNX Runtime's own thread count
        ({"intra_op_threads": 1}, 2, {"intra_op_num_threads": "2"} | SPINS),  # every worker's threads
        ({"intra_op_threads": 1, "intra_op_spinning": "off"}, 2, {"intra_op_num_threads": "2", **OFF}),
        ({"intra_op_spinning": "always"}, 1, None),  # it would be the serving session's twin
        ({"intra_op_threads": 1, "intra_op_spinning": "off"}, 1, None),  # the same: no spinning, one worker
        ({"lone_request_session": False}, 1, None),
        ({"grpc_port": 8001}, 1, {"intra_op_num_threads": "0"} | SPINS),  # gRPC inferences are counted too
    ],
)
def test_the_lone_request_session_has_every_workers_threads_and_spins(
    no_cuda: None, model_repo: Path, overrides: dict[str, object], workers: int, expected: dict[str, str] | None
) -> None:
    """BNFOLD_LONE_REQUEST_SESSION: on CPU a second session with all the workers' intra-op threads, spinning
    between runs (never when spinning is off), unless it would equal the serving session or is turned off."""
    from types import SimpleNamespace

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(repository=model_repo, **overrides))  # type: ignore[arg-type]
    manager = app.state.manager
    if workers > 1:
        manager.cluster = SimpleNamespace(size=workers, ready=lambda: True, plan=None, attach=lambda m: None)
    with TestClient(app) as client:
        shown = client.get("/v2/models/digits").json()["parameters"]["execution"]["lone_request_session"]
        lone = manager.get("digits").model.lone_session
    assert shown == expected
    assert (lone is None) == (expected is None)
