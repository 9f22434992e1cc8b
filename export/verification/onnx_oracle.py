"""The float64 oracle for an ONNX graph: the ORIGINAL graph run in float64, to judge float32 runs against.

``onnx_float64_oracle(model)`` converts a copy to float64 (float initializers, Constant/ConstantOfShape values,
graph inputs, outputs and intermediate types, Cast/dtype targets) and runs it with ONNX Runtime on CPU at
ORT_DISABLE_ALL when ONNX Runtime has double kernels for every op. It does not for Conv, ConvTranspose,
AveragePool, GlobalAveragePool and others (checked with onnxruntime 1.31), so most vision graphs fall back to
``onnx.reference.ReferenceEvaluator``, with BatchNormalization, Conv and ConvTranspose replaced by
``export.verification.onnx_oracle_ops`` (the reference's BN and grouped ConvTranspose are wrong; see there).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

from contracts.sessions import open_session
from export.errors import ExportError
from export.verification.feeds import feed, joined
from export.verification.onnx_oracle_ops import ORACLE_OPS

logger = logging.getLogger(__name__)

FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
# ops whose CPU kernels in onnxruntime 1.31 are float-only (probed); others are tried, and a failure falls back
NO_DOUBLE_KERNEL = frozenset({"Conv", "ConvTranspose", "AveragePool", "GlobalAveragePool", "HardSigmoid"})
DTYPE_ATTRS = ("to", "dtype")  # Cast's target; RandomNormal/EyeLike/... output type


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy of ``model``: every float16/bfloat16/float32 tensor, type and dtype target becomes double."""
    ir_model = ir.serde.deserialize_model(model)
    graphs = {ir_model.graph}
    nodes = list(ir.traversal.RecursiveGraphIterator(ir_model.graph))
    graphs.update(n.graph for n in nodes if isinstance(n.graph, ir.Graph))
    values: list[ir.Value] = []
    for graph in graphs:
        values += [*graph.inputs, *graph.outputs, *graph.initializers.values()]
    for node in nodes:
        values += [v for v in (*node.inputs, *node.outputs) if v is not None]
        _node_to_float64(node)
    for value in set(values):
        if value.dtype in FLOATS:
            value.dtype = ir.DataType.DOUBLE
        tensor = value.const_value
        if tensor is not None and tensor.dtype in FLOATS:
            value.const_value = ir.tensor(np.asarray(tensor.numpy(), dtype=np.float64), name=value.name)
    return ir.serde.serialize_model(ir_model)


def _node_to_float64(node: ir.Node) -> None:
    attrs = node.attributes
    for key in DTYPE_ATTRS:
        if key in attrs and attrs[key].type == ir.AttributeType.INT and ir.DataType(attrs[key].value) in FLOATS:
            attrs[key] = ir.AttrInt64(key, ir.DataType.DOUBLE)
    if "value" in attrs and attrs["value"].type == ir.AttributeType.TENSOR:
        tensor = attrs["value"].as_tensor()
        if tensor.dtype in FLOATS:
            attrs["value"] = ir.AttrTensor("value", ir.tensor(np.asarray(tensor.numpy(), dtype=np.float64)))
    if node.op_type == "Constant":
        for key in ("value_float", "value_floats"):
            if key in attrs:
                array = np.asarray(attrs.pop(key).value, dtype=np.float64)
                attrs["value"] = ir.AttrTensor("value", ir.tensor(array))


class Float64Oracle:
    """Callable: an input batch (``export.verification.feeds``'s form) -> the original graph's ``outputs`` in
    float64 (several joined per sample, in the order given; default the first output alone)."""

    def __init__(self, model: onnx.ModelProto, outputs: list[str] | None = None) -> None:
        self.model64 = to_float64(model)
        self.output_names = outputs or [model.graph.output[0].name]
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]
        if not self.input_names:
            raise ExportError("the float64 oracle needs a graph with at least one input; it has none")
        self.engine = "onnxruntime"
        self._session: ort.InferenceSession | None = None
        self._reference: ReferenceEvaluator | None = None
        missing = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} & NO_DOUBLE_KERNEL)
        if missing:  # skip a session that cannot be built (saves serialising the float64 graph)
            logger.info("float64 oracle: ONNX Runtime has no double kernel for %s; using onnx.reference", missing)
            self._use_reference()
            return
        try:
            self._session = open_session(self.model64.SerializeToString(), level="disable_all")
        except Exception as exc:  # no double kernel (NOT_IMPLEMENTED), or IR/opset this ORT cannot load
            logger.info("float64 oracle: ONNX Runtime cannot run the float64 graph (%s); using onnx.reference", exc)
            self._use_reference()

    def _use_reference(self) -> None:
        self.engine = "onnx.reference"
        self._session = None
        self._reference = ReferenceEvaluator(self.model64, new_ops=ORACLE_OPS)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        feeds = {
            name: np.asarray(a, dtype=np.float64) if np.issubdtype(a.dtype, np.floating) else a
            for name, a in feed(np.asarray(x), self.input_names).items()
        }
        if self._session is not None:
            try:
                return joined(self._session.run(self.output_names, feeds)).astype(np.float64)
            except Exception as exc:  # a double kernel that fails at run time: the reference still can
                logger.info("float64 oracle: ONNX Runtime failed (%s); using onnx.reference", exc)
                self._use_reference()
        assert self._reference is not None
        outputs: list[Any] = list(self._reference.run(self.output_names, feeds))
        return joined(outputs).astype(np.float64)


def onnx_float64_oracle(model: onnx.ModelProto, outputs: list[str] | None = None) -> Float64Oracle:
    """The original ``model`` in float64, as a function of its input batch, giving ``outputs`` (default the
    first output; see the module docstring)."""
    return Float64Oracle(model, outputs)
