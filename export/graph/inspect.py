"""Small facts about ONNX graphs that every export path needs: op counts, metadata, "no BatchNormalization"."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx

from contracts.repository import TRITON_TYPES, TensorSpec
from export.errors import ExportError, VerificationError


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Op types in the main graph, its subgraphs and its local functions, with counts."""
    counts: dict[str, int] = {}

    def walk(nodes: Any) -> None:
        for node in nodes:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                for g in attr.graphs:
                    walk(g.node)

    walk(model.graph.node)
    for fn in model.functions:
        walk(fn.node)
    return dict(sorted(counts.items()))


def require_no_batchnorm(model: onnx.ModelProto) -> dict[str, int]:
    """The graph's op counts; raises VerificationError if any BatchNormalization is left anywhere in it."""
    ops = count_ops(model)
    if ops.get("BatchNormalization", 0):
        raise VerificationError(f"bnfold bug: {ops['BatchNormalization']} BatchNormalization node(s) left in the graph")
    return ops


def add_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Set ONNX metadata_props, every value JSON-encoded (existing keys are replaced)."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update({key: json.dumps(value) for key, value in metadata.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Every graph input (initializers aside) as a TensorSpec: its numpy dtype and one sample's static shape
    (the first axis is the batch axis). Raises ExportError for a symbolic dimension beyond the batch axis or a
    type no v2 datatype carries."""
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in (i for i in model.graph.input if i.name not in initializers):
        tensor = value.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = ""
        if dtype not in TRITON_TYPES:
            kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "no tensor type"
            raise ExportError(f"ONNX input {value.name!r} is {kind}; bnfold serves {', '.join(TRITON_TYPES)}")
        dims = tensor.shape.dim[1:]
        if not tensor.HasField("shape") or not tensor.shape.dim:
            raise ExportError(f"ONNX input {value.name!r} has no shape; give it a batch axis and a fixed sample shape")
        if not all(d.HasField("dim_value") for d in dims):
            raise ExportError(
                f"ONNX input {value.name!r} has a symbolic dimension beyond the batch axis; fix its shape"
            )
        specs.append(TensorSpec(value.name, dtype, tuple(int(d.dim_value) for d in dims)))
    if not specs:
        raise ExportError("the ONNX graph has no input")
    return specs


def declared_outputs(model: onnx.ModelProto) -> list[TensorSpec] | None:
    """Every graph output as a TensorSpec when the graph declares each one's type and a static shape beyond
    the batch axis; None when any is missing (then only a run can tell)."""
    specs = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if not tensor.elem_type or not dims or not all(d.HasField("dim_value") for d in dims[1:]):
            return None
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        if dtype not in TRITON_TYPES:
            return None
        specs.append(TensorSpec(value.name, dtype, tuple(int(d.dim_value) for d in dims[1:])))
    return specs
