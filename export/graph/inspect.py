"""Small facts about ONNX graphs that every export path needs: op counts, metadata, "no BatchNormalization"."""

from __future__ import annotations

import json
from typing import Any

import onnx

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


def graph_io(model: onnx.ModelProto) -> tuple[str, str, tuple[int, ...]]:
    """(input name, output name, one sample's static shape) of a single-input classifier graph."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    dims = inputs[0].type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") for d in dims):
        raise ExportError(
            f"ONNX input {inputs[0].name!r} has a symbolic dimension beyond the batch axis; fix its shape"
        )
    return inputs[0].name, model.graph.output[0].name, tuple(int(d.dim_value) for d in dims)
