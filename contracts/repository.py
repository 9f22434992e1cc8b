"""The model repository's format, Triton Inference Server's layout, written by export and read by the service:

    <repository>/<name>/config.pbtxt             Triton's ModelConfig in protobuf text format
    <repository>/<name>/labels.txt               one class label per line, in output order
    <repository>/<name>/<version>/model.onnx     versions 1, 2, ... (no sign, no leading zero)

config.pbtxt is written and read through Triton's own ``ModelConfig`` message (``tritonclient`` ships
``model_config_pb2``) with ``google.protobuf.text_format``: an unknown field, a wrong type or a value bnfold
cannot serve is a :class:`RepositoryFormatError` naming the file and the field, never a silent default.

Model names and version folders follow one rule each, for the writer and the reader alike.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInput, ModelOutput

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
# A version as the v2 API addresses it (and as bnfold-export writes it): 1, 2, ..., no sign or leading zero.
VERSION_RE = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)
PLATFORM = "onnxruntime_onnx"
CONFIG = "config.pbtxt"
LABELS = "labels.txt"
MODEL_FILE = "model.onnx"
# numpy dtype names -> Triton's config types (the v2 datatypes that map onto ONNX tensor types)
TRITON_TYPES = {
    "bool": DataType.TYPE_BOOL,
    "uint8": DataType.TYPE_UINT8,
    "uint16": DataType.TYPE_UINT16,
    "uint32": DataType.TYPE_UINT32,
    "uint64": DataType.TYPE_UINT64,
    "int8": DataType.TYPE_INT8,
    "int16": DataType.TYPE_INT16,
    "int32": DataType.TYPE_INT32,
    "int64": DataType.TYPE_INT64,
    "float16": DataType.TYPE_FP16,
    "float32": DataType.TYPE_FP32,
    "float64": DataType.TYPE_FP64,
}
_skipped: set[Path] = set()  # version folders already warned about (the repository is scanned often)


class RepositoryFormatError(ValueError):
    """A model name, config.pbtxt or folder that breaks the repository format; the message says where."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as config.pbtxt describes it (``dtype`` a numpy dtype name, a key of
    :data:`TRITON_TYPES`; dims without the batch axis)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.dims)}


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise RepositoryFormatError saying what is allowed."""
    if not NAME_RE.fullmatch(name):
        raise RepositoryFormatError(
            f"model name {name!r} is not allowed: use 1-128 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


def _numbered(model_dir: Path) -> list[Path]:
    """Sub-folders of ``model_dir`` named with ASCII digits only (served or not)."""
    if not model_dir.is_dir():
        return []
    return [p for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()]


def next_version(model_dir: Path) -> int:
    """The version the next export writes: one past every numbered folder, so no folder is ever reused, even
    one such as ``01`` that does not serve."""
    return max((int(p.name) for p in _numbered(model_dir)), default=0) + 1


def versions(model_dir: Path) -> list[int]:
    """Servable versions, ascending: folders named as :data:`VERSION_RE` holding a model.onnx. Hidden partial
    exports are ignored; a numbered folder such as ``01`` or ``0``, which no request could address, is skipped
    with a warning (once per folder)."""
    found = []
    for p in _numbered(model_dir):
        if not (p / MODEL_FILE).is_file():
            continue
        if VERSION_RE.fullmatch(p.name):
            found.append(int(p.name))
        elif p not in _skipped:
            _skipped.add(p)
            logger.warning("%s: skipped; a version folder is named 1, 2, ... (no leading zero, not 0)", p)
    return sorted(found)


def model_names(repository: Path) -> list[str]:
    """Folders of the repository that are models: a valid model name, holding a config.pbtxt or a version."""
    if not repository.is_dir():
        return []
    return [
        p.name
        for p in sorted(repository.iterdir())
        if p.is_dir() and NAME_RE.fullmatch(p.name) and ((p / CONFIG).is_file() or versions(p))
    ]


def _tensor(spec: TensorSpec, message: ModelInput | ModelOutput) -> None:
    if spec.dtype not in TRITON_TYPES:
        raise RepositoryFormatError(f"tensor {spec.name!r}: dtype {spec.dtype!r}; expected one of {list(TRITON_TYPES)}")
    message.name = spec.name
    message.data_type = TRITON_TYPES[spec.dtype]
    message.dims.extend(spec.dims)


def build_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
    max_queue_delay_us: int,
    layout: str = "NCHW",
    labelled: tuple[str, ...] | None = None,
) -> ModelConfig:
    """The ModelConfig of an ONNX Runtime model with dynamic batching. Every input and output is listed; the
    label file goes on the outputs named in ``labelled`` (None: on every output). An image layout is noted on
    a single 3-D input."""
    config = ModelConfig(name=check_model_name(name), platform=PLATFORM, max_batch_size=max_batch_size)
    for spec in inputs:
        _tensor(spec, message := config.input.add())
        if layout in ("NCHW", "NHWC") and len(spec.dims) == 3 and len(inputs) == 1:
            message.format = ModelInput.Format.Value(f"FORMAT_{layout}")
    for spec in outputs:
        _tensor(spec, message := config.output.add())
        if labelled is None or spec.name in labelled:
            message.label_filename = LABELS
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.version_policy.latest.num_versions = 1
    check_config(config, Path(CONFIG))
    return config


def render_config(config: ModelConfig) -> str:
    """config.pbtxt's text for ``config``."""
    return str(text_format.MessageToString(config))


def check_config(config: ModelConfig, path: Path) -> ModelConfig:
    """``config`` if bnfold can serve it (platform onnxruntime_onnx, max_batch_size 1 or more), else an error
    naming the file and the field."""
    if config.platform != PLATFORM:
        raise RepositoryFormatError(f"{path}: platform {config.platform!r}; this server runs {PLATFORM!r}")
    if config.max_batch_size < 1:
        raise RepositoryFormatError(
            f"{path}: max_batch_size is {config.max_batch_size}; expected at least 1 (requests are batched)"
        )
    return config


def parse_config(text: str, path: Path) -> ModelConfig:
    """Parse config.pbtxt text (``path`` only names it in errors) and check it."""
    try:
        config = text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryFormatError(f"{path}: {exc}") from None
    return check_config(config, path)


def read_config(model_dir: Path) -> ModelConfig:
    """``<model_dir>/config.pbtxt`` as Triton's ModelConfig message; an error naming the file when it is
    missing, unreadable, malformed or unservable."""
    path = model_dir / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryFormatError(f"{path}: cannot read the model configuration ({exc})") from None
    return parse_config(text, path)


def render_labels(labels: list[str]) -> str:
    """labels.txt's text: one label per line."""
    return "\n".join(labels) + "\n"


def read_labels(model_dir: Path) -> list[str]:
    """labels.txt, one label per line (blank lines skipped), or [] when absent."""
    path = model_dir / LABELS
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def max_queue_delay_us(config: ModelConfig) -> int:
    """How long a request may wait for others to batch with (``dynamic_batching``; 0 when the config has none,
    as in Triton, where a model without dynamic batching runs each request alone)."""
    return int(config.dynamic_batching.max_queue_delay_microseconds)
