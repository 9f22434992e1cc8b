"""The model repository, in Triton Inference Server's layout (also what KServe's Triton runtime reads):

    <repository>/<name>/config.pbtxt             platform onnxruntime_onnx, batching, dims, label file
    <repository>/<name>/labels.txt               one class label per line, in output order
    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/export_report.json

Versions count up from 1. A version is built in a hidden ``.v<pid>-*.partial`` directory (Triton ignores
non-numeric folders) and renamed to its number only when complete, so no reader ever sees half of one.
Stale partial directories of processes that no longer run are removed by the next export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from export.errors import ExportError
from training.atomic import fsync_dir, public_mode, write_bytes_atomic

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PARTIAL_RE = re.compile(r"^\.v(\d+)-.*\.partial$")
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as config.pbtxt describes it (dims without the batch axis)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise ExportError saying what is allowed."""
    if not NAME_RE.match(name):
        raise ExportError(
            f"model name {name!r} is not allowed: use 1-128 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


def render_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
    max_queue_delay_us: int,
    layout: str = "NCHW",
) -> str:
    """config.pbtxt text for an ONNX Runtime model with dynamic batching and a label file on the output."""

    def tensor(spec: TensorSpec, extra: str) -> str:
        dims = ", ".join(str(d) for d in spec.dims)
        return (
            f'  {{\n    name: "{spec.name}"\n    data_type: {TRITON_TYPES[spec.dtype]}\n{extra}'
            f"    dims: [ {dims} ]\n  }}"
        )

    fmt = f"    format: FORMAT_{layout}\n" if layout in ("NCHW", "NHWC") and len(inputs[0].dims) == 3 else ""
    ins = ",\n".join(tensor(s, fmt) for s in inputs)
    outs = ",\n".join(tensor(s, '    label_filename: "labels.txt"\n') for s in outputs)
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


def existing_versions(model_dir: Path) -> list[int]:
    """Numeric version folders of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(model_dir: Path) -> None:
    """Delete partial version folders left by exports that were killed."""
    if not model_dir.is_dir():
        return
    for p in model_dir.iterdir():
        m = PARTIAL_RE.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            logger.info("removing %s, left by an interrupted export", p)
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def new_version(repository: Path, name: str) -> Iterator[tuple[Path, int]]:
    """Yield (staging folder, version number); on success the folder becomes ``<name>/<version>``."""
    model_dir = repository / check_model_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".v{os.getpid()}-", suffix=".partial", dir=model_dir))
    public_mode(staging, directory=True)
    try:
        version = (existing_versions(model_dir) or [0])[-1] + 1
        yield staging, version
        for child in staging.iterdir():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        final = model_dir / str(version)
        if final.exists():
            raise ExportError(f"version folder {final} appeared during the export; run it again")
        os.rename(staging, final)
        fsync_dir(model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_files(model_dir: Path, config_text: str, labels: list[str]) -> None:
    """Replace config.pbtxt and labels.txt atomically."""
    write_bytes_atomic(model_dir / "labels.txt", ("\n".join(labels) + "\n").encode())
    write_bytes_atomic(model_dir / "config.pbtxt", config_text.encode())
