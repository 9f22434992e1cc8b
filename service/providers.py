"""Choosing ONNX Runtime execution providers: CUDA when it is actually usable, otherwise CPU.

onnxruntime-gpu lists CUDAExecutionProvider even on machines without CUDA libraries or a GPU; asking for it
there makes ONNX Runtime log a stack of errors and fall back. bnfold asks once, with ONNX Runtime's logging
silenced, checks which provider the session really got, and states the outcome once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_resolved: dict[str, list[str]] = {}


def _probe_cuda(model_path: Path) -> bool:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)  # silence the loader's errors while we find out
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(str(model_path), options, providers=[CUDA, CPU])
        return bool(session.get_providers() and session.get_providers()[0] == CUDA)
    except Exception:  # any failure to create a CUDA session means "not usable"
        return False
    finally:
        ort.set_default_logger_severity(2)


def resolve_providers(setting: str, model_path: Path) -> list[str]:
    """Providers to use for every session: decided once per process from ``setting`` (auto, cpu, cuda)."""
    if setting in _resolved:
        return _resolved[setting]
    if setting == "cpu":
        chosen = [CPU]
        logger.info("execution provider: CPU (configured)")
    else:
        usable = _probe_cuda(model_path)
        if usable:
            chosen = [CUDA, CPU]
            logger.info("execution provider: CUDA (GPU found and usable)")
        elif setting == "cuda":
            raise RuntimeError(
                "BNFOLD_PROVIDERS=cuda but CUDA is not usable here (no GPU, or CUDA/cuDNN libraries missing); "
                "use auto or cpu"
            )
        else:
            chosen = [CPU]
            logger.info("execution provider: CPU (CUDA is not usable on this machine)")
    _resolved[setting] = chosen
    return chosen


def session_options(intra_op_threads: int) -> Any:
    """Serving session options: full graph optimisation, quiet logging, optional thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return options
