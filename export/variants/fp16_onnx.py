"""The fp16 variant of a folded ONNX graph, without torch: ONNX Runtime's own float16 converter.

Transform: every float32 initializer and value becomes float16, and Cast nodes at the graph's edges keep
the input and output float32 (``keep_io_types``), so clients and the service handle it exactly like the
float32 model. Ops that ONNX Runtime cannot run in float16 stay float32 behind Casts (the converter's
default block list).

Precondition, checked before conversion: every float32 initializer of the folded graph fits fp16
(|v| <= 65504); the converter would otherwise clamp it in silence. The variant is then verified like any
other, against the float64 oracle with fp16's tolerance (``export.verification.checks.FLOAT16``).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from export.errors import ExportError

logger = logging.getLogger(__name__)

FP16_MAX = float(np.finfo(np.float16).max)


def check_fp16_graph(model: onnx.ModelProto) -> None:
    """Refuse a graph holding a float32 initializer beyond fp16's range, naming it."""
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        peak = float(np.abs(values).max()) if values.size else 0.0
        if peak > FP16_MAX:
            raise ExportError(
                f"cannot make an fp16 variant: folded initializer {init.name!r} holds {peak:.4g}, beyond fp16's "
                f"largest value {FP16_MAX:.0f}; export in float32 (drop --fp16)"
            )


def to_fp16_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32-in, float32-out copy of the folded ``model`` computing in fp16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    check_fp16_graph(model)
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    graph = ir.serde.deserialize_model(converted)
    graph.graph.sort()  # the converter appends its input Casts at the end; ONNX wants topological order
    logger.debug("converted the folded graph to float16 (float32 input and output)")
    return ir.serde.serialize_model(graph)
