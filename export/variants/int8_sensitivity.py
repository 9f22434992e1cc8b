"""Per-layer quantization error of an int8 QDQ graph against its float original: which layer to keep in float.

For every quantized Conv, Gemm or MatMul (one whose weight arrives through a DequantizeLinear) the float
graph and the QDQ graph are run on the same calibration samples with their intermediate tensors exposed as
extra outputs, graph optimisations off (so the QDQ graph computes exactly the int8 values, in float).
Signal-to-quantization-noise ratios, SQNR(f, q) = 20 log10(||f|| / ||f - q||) in dB (higher is better), via
``onnxruntime.quantization.qdq_loss_debug``:

- ``weight_sqnr_db``: the layer's own int8 weights (per output channel) against its float weights;
- ``output_sqnr_db`` and ``output_rel_error`` (||f - q|| / ||f||): the layer's output as the next layer sees
  it (after its output QuantizeLinear/DequantizeLinear when it has one) against the float graph's tensor of
  the same name; this error is cumulative, it includes every layer before;
- ``added_noise_db``: input SQNR minus output SQNR, the noise this layer adds to what reaches it. The layer
  with the largest added noise is the first candidate to keep in float.

Preconditions: the QDQ graph was made from the float graph by ONNX Runtime's quantizer, which keeps the float
graph's tensor names (a Conv followed by a Relu it absorbs takes the Relu's output name).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization.qdq_loss_debug import (
    compute_signal_to_quantization_noice_ratio,
    compute_weight_error,
    create_weight_matching,
)
from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX

from export.verification.checks import ort_session

QUANTIZABLE = ("Conv", "Gemm", "MatMul")


@dataclass
class LayerError:
    """One quantized layer's error figures (dB: higher is better)."""

    layer: str
    op: str
    weight: str
    output: str
    weight_sqnr_db: float
    output_sqnr_db: float
    output_rel_error: float
    added_noise_db: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Layer:
    node: onnx.NodeProto
    weight: str  # the float weight's name
    seen_in: str  # the QDQ tensor the layer reads (a DequantizeLinear output)
    seen_out: str  # the QDQ tensor the next layer reads


def _layers(qdq: onnx.ModelProto) -> list[_Layer]:
    """Quantized Conv/Gemm/MatMul nodes, with the tensors that carry their input and output in the QDQ graph."""
    consumer = {name: node for node in qdq.graph.node for name in node.input}

    def after_qdq(tensor: str) -> str:  # the DequantizeLinear output that follows tensor's QuantizeLinear, if any
        q = consumer.get(tensor)
        dq = consumer.get(q.output[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        return dq.output[0] if dq is not None and dq.op_type == "DequantizeLinear" else tensor

    found = []
    for node in qdq.graph.node:
        if node.op_type in QUANTIZABLE and len(node.input) > 1 and node.input[1].endswith(DEQUANT_OUTPUT_SUFFIX):
            weight = node.input[1][: -len(DEQUANT_OUTPUT_SUFFIX)]
            found.append(_Layer(node, weight, node.input[0], after_qdq(node.output[0])))
    return found


def _float_name(qdq_name: str) -> str:
    return qdq_name[: -len(DEQUANT_OUTPUT_SUFFIX)] if qdq_name.endswith(DEQUANT_OUTPUT_SUFFIX) else qdq_name


def _activations(model: onnx.ModelProto, names: set[str], x: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """Run ``model`` on ``x`` with ``names`` exposed as outputs (optimisations off); name -> value."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name in sorted(names - present):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="bnfold-int8-") as tmp:
        path = Path(tmp) / "exposed.onnx"
        onnx.save(model, str(path))
        session = ort_session(path)
        wanted = [o.name for o in session.get_outputs() if o.name in names]
        return dict(zip(wanted, session.run(wanted, {input_name: x}), strict=True))


def layer_errors(fp32_path: Path, qdq_path: Path, x: np.ndarray, input_name: str) -> list[LayerError]:
    """Quantization error of each quantized layer of ``qdq_path`` against ``fp32_path`` on samples ``x``."""
    fp32, qdq = onnx.load(str(fp32_path)), onnx.load(str(qdq_path))
    layers = _layers(qdq)
    float_names = {n for node in fp32.graph.node for n in node.output} | {i.name for i in fp32.graph.input}
    layers = [la for la in layers if _float_name(la.seen_out) in float_names]
    q_act = _activations(qdq, {n for la in layers for n in (la.seen_in, la.seen_out)}, x, input_name)
    f_names = {_float_name(n) for la in layers for n in (la.seen_in, la.seen_out)}
    f_act = _activations(fp32, f_names - {input_name}, x, input_name) | {input_name: x}
    weight_db = compute_weight_error(create_weight_matching(str(fp32_path), str(qdq_path)))
    rows = []
    for la in layers:
        ref, got = f_act[_float_name(la.seen_out)], q_act[la.seen_out]
        out_db = compute_signal_to_quantization_noice_ratio(ref, got)
        in_ref = f_act.get(_float_name(la.seen_in))
        in_db = None if in_ref is None else compute_signal_to_quantization_noice_ratio(in_ref, q_act[la.seen_in])
        rows.append(
            LayerError(
                layer=la.node.name or la.seen_out,
                op=la.node.op_type,
                weight=la.weight,
                output=_float_name(la.seen_out),
                weight_sqnr_db=round(float(weight_db.get(la.weight, float("nan"))), 2),
                output_sqnr_db=round(out_db, 2),
                output_rel_error=float(np.linalg.norm(ref - got) / max(float(np.linalg.norm(ref)), 1e-12)),
                added_noise_db=None if in_db is None else round(in_db - out_db, 2),
            )
        )
    return rows
