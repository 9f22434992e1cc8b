"""A direct ONNX Runtime run of a model file, the reference the server's answers are compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def direct_logits(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs of ``model_path`` for ``x`` from a plain CPU session, no batching, no HTTP."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]
    return out
