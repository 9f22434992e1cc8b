"""One loaded model version: an ONNX Runtime session, its inputs and outputs, and what bnfold's metadata says.

A model has any number of inputs and outputs of the v2 datatypes that map onto ONNX types. ``run`` takes one
array per input (model order) and returns one per output (model order). The single-input fields of older
callers (``input_name``, ``sample_shape``, ``output_name``, ...) are the first input's and the labelled
(else the first) output's.
"""

from __future__ import annotations

import functools
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
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint64)": "UINT64",
    "tensor(uint32)": "UINT32",
    "tensor(uint16)": "UINT16",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}
V2_NUMPY = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT64": np.uint64,
    "UINT32": np.uint32,
    "UINT16": np.uint16,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: its name, v2 datatype and one sample's shape (without the batch axis)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def classes(self) -> int:
        """The class count of a floating-point (N, classes) tensor; 0 for any other."""
        return self.shape[0] if self.datatype.startswith("FP") and len(self.shape) == 1 else 0

    def describe(self) -> str:
        return f"{self.name!r} ({self.datatype}, shape {[-1, *self.shape]})"


class ModelLoadError(Exception):
    """A model version that cannot be served; the message says why."""


@dataclass
class ModelVersion:
    """A servable model version. ``run`` is thread-safe (ONNX Runtime sessions are)."""

    name: str
    version: int
    path: Path
    session: Any
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
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
    labels_output: str | None = None  # the (N, classes) output the labels name (None: none is)
    lone_session: Any = None  # the lone-request session (see lone_session_options); None: ``session`` runs all
    input_names: list[str] = field(init=False)
    output_names: list[str] = field(init=False)
    input_index: dict[str, int] = field(init=False)
    output_index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.input_names = [t.name for t in self.inputs]
        self.output_names = [t.name for t in self.outputs]
        self.input_index = {name: i for i, name in enumerate(self.input_names)}
        self.output_index = {name: i for i, name in enumerate(self.output_names)}

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_datatype(self) -> str:
        return self.inputs[0].datatype

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.inputs[0].shape

    @property
    def main_output(self) -> TensorInfo:
        """The labelled output, else the first."""
        name = self.labels_output
        return self.outputs[self.output_index[name]] if name is not None else self.outputs[0]

    @property
    def output_name(self) -> str:
        return self.main_output.name

    @property
    def output_datatype(self) -> str:
        return self.main_output.datatype

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.main_output.shape

    def image_classifier(self) -> str | None:
        """None when ``/classify`` applies (one input, an (N, classes) output); else why it does not."""
        if len(self.inputs) != 1:
            return f"it takes {len(self.inputs)} inputs ({', '.join(self.input_names)}), not one image"
        if self.labels_output is None:
            shapes = ", ".join(o.describe() for o in self.outputs)
            return f"no output is (N, classes) (outputs: {shapes})"
        return None

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
            "lone_request_session": None if self.lone_session is None else session_in_force(self.lone_session),
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

    def run(self, batch: tuple[np.ndarray, ...], lone: bool = False) -> list[np.ndarray]:
        """Every output (model order) for ``batch``, one array per input (model order, N rows each), padded
        up to its bucket when buckets are on. ``lone``: the server has no other client, so the
        lone-request session runs it when there is one."""
        session = self.lone_session if lone and self.lone_session is not None else self.session
        if self.buckets:
            return run_padded(functools.partial(self._run, session), batch, self.buckets)
        return self._run(session, batch)

    def _run(self, session: Any, batch: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        out: list[np.ndarray] = session.run(self.output_names, dict(zip(self.input_names, batch, strict=True)))
        return out

    def warm_up(self) -> None:
        """Run every bucket (without buckets: batch 1 and the largest) once on each session, so no request
        pays a set-up cost."""
        for session in (self.session, self.lone_session):
            if session is None:
                continue
            for n in self.buckets or sorted({1, self.max_batch_size}):
                zeros: tuple[np.ndarray, ...] = tuple(
                    np.zeros((n, *t.shape), V2_NUMPY.get(t.datatype, np.float32)) for t in self.inputs
                )
                self._run(session, zeros)


def _static_dims(dims: list[Any], what: str, path: Path) -> tuple[int, ...]:
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ModelLoadError(f"{path}: {what} must have fixed dimensions besides the batch axis, got {dims}")
    return tuple(int(d) for d in dims)


def _tensor_info(arg: Any, what: str, path: Path) -> TensorInfo:
    """An ONNX Runtime input or output (``NodeArg``) as a :class:`TensorInfo`; refused when no v2 datatype
    carries its type or a dimension beyond the batch axis is not fixed."""
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"{path}: {what} {arg.name!r} is {arg.type}; bnfold serves {', '.join(V2_NUMPY)}")
    return TensorInfo(arg.name, datatype, _static_dims(list(arg.shape[1:]), f"{what} {arg.name!r}", path))


def _labels_output(outputs: tuple[TensorInfo, ...], metadata: dict[str, Any]) -> str | None:
    """The output labels and ``/classify`` apply to: the one export recorded (``bnfold.output``, kind logits);
    without that record the first (N, classes) floating-point output; None when there is none."""
    recorded = metadata.get("bnfold.output")
    if isinstance(recorded, dict) and "kind" in recorded:
        name = recorded.get("name")
        found = [o for o in outputs if o.name == name and o.classes]
        return found[0].name if recorded["kind"] == "logits" and found else None
    return next((o.name for o in outputs if o.classes), None)


def lone_session_options(
    provider: str, lone_threads: int | None, intra_op_threads: int, spinning: str
) -> tuple[int, str] | None:
    """(threads, spinning) of the lone-request session, or None when there is none to open.

    A lone client's request (the server has no other client, see :mod:`service.batching`) can have
    every core the workers share (``lone_threads``) with threads that keep spinning between runs, so the
    next request of that client does not wait for a sleeping thread to wake: measured on 2 cores, a lone
    client's median latency fell 0.3-0.45 ms (benchmarks/RESULTS.md). Not on CUDA (the GPU runs the model),
    and not when it would be the serving session's twin (one worker already spinning always); spinning
    ``off`` stays off.
    """
    if lone_threads is None or provider == CUDA:
        return None
    lone = (lone_threads, "off" if spinning == "off" else "always")
    return None if lone == (intra_op_threads, spinning) else lone


def _open_session(
    path: Path, providers_setting: str, intra_op_threads: int, cuda: CudaOptions | None, spinning: str
) -> Any:
    """An ONNX Runtime session for ``path`` with at least one input and one output."""
    providers = resolve_providers(providers_setting, path, cuda)
    options = session_options(intra_op_threads, spinning)
    try:
        session = open_session(path, providers, options=options)
    except Exception as exc:  # ONNX Runtime raises its own exception types for every kind of bad file
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not inputs or not outputs:
        raise ModelLoadError(
            f"{path}: expected at least one input and one output, got {len(inputs)} and {len(outputs)}"
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
    metadata = _custom_metadata(session)
    inputs = tuple(_tensor_info(t, "input", path) for t in session.get_inputs())
    outputs = tuple(_tensor_info(t, "output", path) for t in session.get_outputs())
    labelled = _labels_output(outputs, metadata)
    classes = outputs[[o.name for o in outputs].index(labelled)].classes if labelled is not None else 0
    labels = (metadata.get("bnfold.labels") or read_labels(model_dir)) if labelled is not None else []
    return ModelVersion(
        name=model_dir.name,
        version=version,
        path=path,
        session=session,
        inputs=inputs,
        outputs=outputs,
        labels_output=labelled,
        labels=list(labels) or [str(i) for i in range(classes)],
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
    lone_threads: int | None = None,
) -> ModelVersion:
    """Open ``<model_dir>/<version>/model.onnx`` as a session, read its metadata and warm it up.

    ``cuda``: the CUDA provider's options when it is chosen; ``batch_buckets``: see :mod:`service.buckets`;
    ``spinning``: see :func:`service.providers.session_options`; ``lone_threads``: the intra-op threads of a
    lone-request session (:func:`lone_session_options`; None: no such session).
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
    lone = lone_session_options(model.provider, lone_threads, intra_op_threads, spinning)
    if lone is not None:
        model.lone_session = _open_session(path, providers_setting, lone[0], cuda, lone[1])
    try:
        model.warm_up()
    except Exception as exc:  # a model that cannot run its own warm-up batch must not serve
        raise ModelLoadError(f"{path}: warm-up run failed: {first_line(exc)}") from exc
    buckets = list(model.buckets) or "off"
    lone_note = "" if lone is None else f", lone-request session: {lone[0] or 'default'} threads, spinning {lone[1]}"
    logger.info(
        "loaded %s v%d (%s, max batch %d, buckets %s%s)",
        model.name,
        version,
        model.provider,
        model.max_batch_size,
        buckets,
        lone_note,
    )
    return model
