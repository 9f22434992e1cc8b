"""One loaded model version: an ONNX Runtime session plus what bnfold's metadata says about its input."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contracts.errors import first_line
from contracts.sessions import open_session
from service.buckets import resolve_buckets, run_padded
from service.providers import CUDA, CudaOptions, options_in_force, resolve_providers, session_in_force, session_options
from service.queue_policy import QueuePolicy, QueuePolicyError
from service.repository import RepositoryFormatError, read_config, read_labels
from service.repository import max_queue_delay_us as max_queue_delay_us_of

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

logger = logging.getLogger(__name__)

ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


class ModelLoadError(Exception):
    """A model version that cannot be served; the message says why."""


@dataclass
class ModelVersion:
    """A servable model version. ``run`` is thread-safe (ONNX Runtime sessions are)."""

    name: str
    version: int
    path: Path
    session: Any
    input_name: str
    input_datatype: str
    sample_shape: tuple[int, ...]  # without the batch axis
    output_name: str
    output_datatype: str
    output_shape: tuple[int, ...]
    labels: list[str]
    max_batch_size: int
    max_queue_delay_us: int
    platform: str
    provider: str
    metadata: dict[str, Any] = field(default_factory=dict)
    provider_options: dict[str, str] = field(default_factory=dict)  # as ONNX Runtime reports them in force
    session_options: dict[str, str] = field(default_factory=dict)  # threads and spinning, as reported in force
    buckets: tuple[int, ...] = ()  # batch sizes each batch is padded up to (empty: no padding)
    queue_policy: QueuePolicy = field(default_factory=QueuePolicy)  # priority levels and queue timeouts
    config: ModelConfig | None = None  # config.pbtxt as read (Triton's ModelConfig message)

    @property
    def normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        norm = (self.metadata.get("bnfold.input") or {}).get("normalization")
        if not norm:
            return None
        return np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)

    def execution(self) -> dict[str, Any]:
        """The provider and session options ONNX Runtime reports in force, and the batch buckets (model metadata)."""
        return {
            "provider": self.provider,
            "provider_options": self.provider_options,
            "session_options": self.session_options,
            "batch_buckets": self.buckets,
        }

    def info_labels(self) -> tuple[str, ...]:
        """Label values of ``bnfold_model_info``: model, version, provider, provider and session options (JSON),
        buckets, precision."""
        options = json.dumps(self.provider_options, sort_keys=True)
        session = json.dumps(self.session_options, sort_keys=True)
        buckets = ",".join(map(str, self.buckets)) or "off"
        precision = str(self.metadata.get("bnfold.precision", "float32"))
        return self.name, str(self.version), self.provider, options, session, buckets, precision

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for ``batch`` (N, *sample_shape), padded up to its bucket when buckets are on."""
        if self.buckets:
            return run_padded(self._run, batch, self.buckets)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([self.output_name], {self.input_name: batch})[0]
        return out

    def warm_up(self) -> None:
        """Run every bucket (without buckets: batch 1 and the largest) once, so no request pays a set-up cost."""
        dtype = np.float16 if self.input_datatype == "FP16" else np.float32
        for n in self.buckets or sorted({1, self.max_batch_size}):
            self._run(np.zeros((n, *self.sample_shape), dtype))


def _static_dims(dims: list[Any], what: str, path: Path) -> tuple[int, ...]:
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ModelLoadError(f"{path}: {what} must have fixed dimensions besides the batch axis, got {dims}")
    return tuple(int(d) for d in dims)


def _open_session(
    path: Path, providers_setting: str, intra_op_threads: int, cuda: CudaOptions | None, spinning: str
) -> Any:
    """An ONNX Runtime session for ``path`` with one input and at least one output."""
    providers = resolve_providers(providers_setting, path, cuda)
    options = session_options(intra_op_threads, spinning)
    try:
        session = open_session(path, providers, options=options)
    except Exception as exc:  # ONNX Runtime raises its own exception types for every kind of bad file
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(
            f"{path}: expected one input and at least one output, got {len(inputs)} and {len(outputs)}"
        )
    return session


def _custom_metadata(session: Any) -> dict[str, Any]:
    """The model's custom metadata, each value parsed as JSON where it is JSON."""
    metadata: dict[str, Any] = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value
    return metadata


def _queue_policy(config: ModelConfig, model_dir: Path) -> QueuePolicy:
    try:
        return QueuePolicy.from_config(config.dynamic_batching, model_dir / "config.pbtxt")
    except QueuePolicyError as exc:
        raise ModelLoadError(str(exc)) from None


def _describe(
    session: Any,
    model_dir: Path,
    version: int,
    config: ModelConfig,
    max_batch_size: int | None,
    max_queue_delay_us: int | None,
) -> ModelVersion:
    """What the session, its metadata and config.pbtxt say about the version (the settings override both)."""
    path = model_dir / str(version) / "model.onnx"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    metadata = _custom_metadata(session)
    labels = metadata.get("bnfold.labels") or read_labels(model_dir)
    out_shape = _static_dims(list(outputs[0].shape[1:]), "the output", path)
    return ModelVersion(
        name=model_dir.name,
        version=version,
        path=path,
        session=session,
        input_name=inputs[0].name,
        input_datatype=ORT_TO_V2.get(inputs[0].type, inputs[0].type),
        sample_shape=_static_dims(list(inputs[0].shape[1:]), "the input", path),
        output_name=outputs[0].name,
        output_datatype=ORT_TO_V2.get(outputs[0].type, outputs[0].type),
        output_shape=out_shape,
        labels=list(labels) or [str(i) for i in range(out_shape[-1])],
        max_batch_size=max_batch_size or config.max_batch_size,
        max_queue_delay_us=max_queue_delay_us_of(config) if max_queue_delay_us is None else max_queue_delay_us,
        platform=config.platform,
        provider=session.get_providers()[0],
        metadata=metadata,
        provider_options=options_in_force(session),
        session_options=session_in_force(session),
        queue_policy=_queue_policy(config, model_dir),
        config=config,
    )


def load_version(
    model_dir: Path,
    version: int,
    providers_setting: str,
    intra_op_threads: int,
    max_batch_size: int | None = None,
    max_queue_delay_us: int | None = None,
    *,
    cuda: CudaOptions | None = None,
    batch_buckets: str = "off",
    spinning: str = "run",
) -> ModelVersion:
    """Open ``<model_dir>/<version>/model.onnx`` as a session, read its metadata and warm it up.

    ``cuda``: the CUDA provider's options when it is chosen; ``batch_buckets``: see :mod:`service.buckets`;
    ``spinning``: see :func:`service.providers.session_options`.
    """
    path = model_dir / str(version) / "model.onnx"
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist")
    try:
        config = read_config(model_dir)
    except RepositoryFormatError as exc:
        raise ModelLoadError(str(exc)) from None
    session = _open_session(path, providers_setting, intra_op_threads, cuda, spinning)
    model = _describe(session, model_dir, version, config, max_batch_size, max_queue_delay_us)
    model.buckets = resolve_buckets(batch_buckets, model.provider == CUDA, model.max_batch_size)
    try:
        model.warm_up()
    except Exception as exc:  # a model that cannot run its own warm-up batch must not serve
        raise ModelLoadError(f"{path}: warm-up run failed: {first_line(exc)}") from exc
    buckets = list(model.buckets) or "off"
    logger.info(
        "loaded %s v%d (%s, max batch %d, buckets %s)",
        model.name,
        version,
        model.provider,
        model.max_batch_size,
        buckets,
    )
    return model
