"""ONNX Runtime sessions, made one way for export's verification and for serving, and the one CUDA probe.

    session_options(level, ...)   graph optimisation level, quiet logging, threads, session config entries
    open_session(model, ...)      an InferenceSession on a file or serialized bytes, CPU unless told otherwise
    probe_cuda(model)             a session that really runs on CUDA, or None

onnxruntime-gpu lists CUDAExecutionProvider even on machines without CUDA libraries or a GPU; asking for it
there makes ONNX Runtime log a stack of errors and fall back to the CPU. The probe asks with ONNX Runtime's
logging silenced and counts only a session whose first provider really is CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
Provider = str | tuple[str, dict[str, str]]
LEVELS = ("disable_all", "enable_all")  # verification compares both; serving runs enable_all


def session_options(
    level: str = "enable_all",
    *,
    intra_op_threads: int = 0,
    config_entries: Mapping[str, str] | None = None,
    log_severity: int = 3,
) -> Any:
    """ONNX Runtime session options: optimisation ``level`` (one of :data:`LEVELS`), logging at
    ``log_severity`` (3: errors only), ``intra_op_threads`` (0: ONNX Runtime's default) and config entries."""
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"graph optimisation level {level!r}; expected one of {', '.join(LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if level == "disable_all"
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.log_severity_level = log_severity
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    for key, value in (config_entries or {}).items():
        options.add_session_config_entry(key, value)
    return options


def open_session(
    model: Path | bytes, providers: Sequence[Provider] = (CPU,), *, level: str = "disable_all", options: Any = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` (a file, or a serialized ModelProto) on ``providers``,
    with ``options`` or else :func:`session_options` at ``level``. ONNX Runtime's own exceptions pass through."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options or session_options(level), providers=list(providers))


def probe_cuda(
    model: Path | bytes, provider_options: dict[str, str] | None = None, *, level: str = "enable_all"
) -> Any:
    """A session for ``model`` that really runs on CUDA here, or None (no GPU, no CUDA libraries, a CPU build)."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return None
    ort.set_default_logger_severity(4)  # silence the loader's errors while we find out
    try:
        cuda: Provider = (CUDA, provider_options) if provider_options else CUDA
        session = open_session(model, [cuda, CPU], options=session_options(level, log_severity=4))
    except Exception:  # any failure to create a CUDA session means "not usable"
        return None
    finally:
        ort.set_default_logger_severity(2)
    return session if session.get_providers()[:1] == [CUDA] else None
