"""Small ONNX graphs in ONNX's textual syntax, and the float32-vs-float64 rule the ONNX fold is judged by.

Graphs are judged by the verification rule: the folded graph's distance from the original graph's float64
oracle may be at most twice the float32 original's own, plus 2^-20 of the output scale.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from export.verification.checks import Check, Reference, against_oracle
from export.verification.onnx_oracle import onnx_float64_oracle

FOLD_PREV, FOLD_NEXT, LOWER = "folded-into-preceding", "folded-into-following", "lowered-to-scale-shift"
PADDED = "folded-into-following-padded"
IR_VERSION = 8  # onnxruntime 1.31 reads IR versions up to 11; onnx's default may be newer


def model(
    body: str, opset: int, inputs: str, outputs: str, float_type: type = np.float32, **initializers: np.ndarray
) -> onnx.ModelProto:
    """A model from textual ``body`` lines, with ``float_type`` initializers (ints stay int64)."""
    text = f'<ir_version: {IR_VERSION}, opset_import: ["" : {opset}]>\ng ({inputs}) => ({outputs}) {{\n{body}\n}}'
    proto = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        dtype = np.int64 if np.issubdtype(array.dtype, np.integer) else float_type
        proto.graph.initializer.append(numpy_helper.from_array(array.astype(dtype), name))
    onnx.checker.check_model(proto)
    return proto


def bn_stats(
    rng: np.random.Generator, channels: int, prefix: str, shape: tuple[int, ...] = ()
) -> dict[str, np.ndarray]:
    """Non-trivial population statistics: negative gammas, variances from 1e-3 to 10, shifted means."""
    size = (channels, *shape)
    var = 10 ** rng.uniform(-3, 1, size=size)
    gamma = rng.normal(size=size)
    gamma.flat[0] = -abs(gamma.flat[0]) - 0.1
    return {
        f"{prefix}_g": gamma,
        f"{prefix}_b": rng.normal(size=size),
        f"{prefix}_m": rng.normal(size=size) * 2,
        f"{prefix}_v": var,
    }


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of ``proto`` in ONNX Runtime on CPU, with graph optimisations OFF (no runtime fusion)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def count_ops(proto: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in proto.graph.node)


def judge(original: onnx.ModelProto, folded: onnx.ModelProto, x: np.ndarray) -> Check:
    """The folded graph on ``x``, judged by the verification rule against the ORIGINAL graph's float64 oracle."""
    ref = Reference("random", x, onnx_float64_oracle(original)(x).astype(np.float64), run(original, x))
    return against_oracle("folded graph", run(folded, x), ref)
