"""An ONNX graph in its training form, every BatchNormalization observed: the graph half of Algorithm 2.

Preconditions, per BatchNormalization node: in the main graph (not a subgraph or a local function), statistics
per channel (``spatial`` 1, the default), scale and B constants, and any training outputs (mean, var,
saved_mean, saved_var) read by nothing but the graph's outputs. A node that breaks one is refused with its name.

Transform (``training_form``), for each BN node with input x of shape [N, C, D1, ...]:

    x3  = Reshape(Cast(x, DOUBLE), [0, 0, -1])             [N, C, L]; L = D1 * ... (1 for a [N, C] input)
    mu  = ReduceMean(x3, axes=[0, 2])                       the batch mean per channel, float64
    var = ReduceMean((x3 - mu)^2, axes=[0, 2])              the biased batch variance, float64
    y   = BatchNormalization(x, scale, B, Cast(mu), Cast(var))   in inference mode

so y = scale * (x - mu_B) / sqrt(sigma_B^2 + eps) + B: exactly what BN computes in training mode, and every
later BN sees the inputs of the training network. mu, var and Shape(x) become graph outputs. Averaging them
over mini-batches is ``export.recalibration.algorithm2``'s job (float64, as ``training.population`` does).

``with_statistics`` turns every BN into inference mode (``training_mode`` dropped, training outputs removed)
and, given new statistics, stores them as new initializers (copy-on-write: an initializer shared with another
node is never edited).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from export.errors import ExportError
from export.folding.onnx_bn import BN_OP, constant_array, node_label, opset_of
from export.folding.onnx_edit import GraphEditor, make_node

REDUCE_AXES_AS_INPUT = 18  # ReduceMean takes its axes as an input from opset 18


@dataclass(frozen=True)
class Observed:
    """The graph outputs that expose one BN's batch statistics."""

    label: str
    mean: str  # [C] float64
    var: str  # [C] float64, biased
    shape: str  # Shape(x), int64


def batchnorm_nodes(model: ir.Model, purpose: str) -> list[ir.Node]:
    """The main graph's BN nodes, in graph order; ExportError for a BN that ``purpose`` cannot reach."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if _is_bn(node) and node.graph is not model.graph:
            raise ExportError(
                f"{purpose}: BatchNormalization {node_label(node)!r} is inside a subgraph, where its "
                "input cannot be observed"
            )
    for function in model.functions.values():
        if any(_is_bn(n) for n in function):
            raise ExportError(f"{purpose}: BatchNormalization inside function {function.name!r}; inline it first")
    nodes = [n for n in model.graph if _is_bn(n)]
    for node in nodes:
        _check_observable(node, model, purpose)
    return nodes


def _is_bn(node: ir.Node) -> bool:
    return node.op_type == BN_OP and node.domain == ""


def _check_observable(node: ir.Node, model: ir.Model, purpose: str) -> None:
    label = node_label(node)
    if len(node.inputs) < 5 or node.inputs[0] is None:
        raise ExportError(f"{purpose}: BatchNormalization {label!r} has {len(node.inputs)} inputs; expected 5")
    if opset_of(node, model) < 9 and node.attributes.get_int("spatial", 1) == 0:
        raise ExportError(
            f"{purpose}: BatchNormalization {label!r} has spatial=0 (per-element statistics); "
            "Algorithm 2 here recomputes per-channel statistics only"
        )
    for name, value in zip(("scale", "B"), node.inputs[1:3], strict=True):
        if constant_array(value) is None:
            raise ExportError(f"{purpose}: BatchNormalization {label!r}: input {name} is not a constant initializer")
    for value in node.outputs[1:]:
        if value is not None and value.uses():
            readers = ", ".join(sorted({node_label(u.node) for u in value.uses()}))
            raise ExportError(
                f"{purpose}: BatchNormalization {label!r}: its training output {value.name!r} is read "
                f"by {readers}; only graph outputs may read it"
            )


def training_form(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Observed]]:
    """A copy of ``model`` whose BN nodes normalise with their batch's statistics, and the outputs observing them."""
    ir_model = ir.serde.deserialize_model(model)
    editor = GraphEditor(ir_model, {})
    nodes = batchnorm_nodes(ir_model, "--recalibrate")
    if not nodes:
        raise ExportError(
            "--recalibrate: the graph has no BatchNormalization node, so it has no statistics to recompute (its "
            "exporter may have folded BN into the convolutions already)"
        )
    observed = [_observe(node, ir_model, editor) for node in nodes]
    return ir.serde.serialize_model(ir_model), observed


class _Builder:
    """New nodes for one BN, named after it, each with one named output."""

    def __init__(self, editor: GraphEditor, label: str, opset: int) -> None:
        self.editor, self.label, self.opset = editor, label, opset
        self.nodes: list[ir.Node] = []

    def add(
        self, op: str, inputs: Sequence[ir.Value | None], attrs: Sequence[ir.Attr] = (), name: str = ""
    ) -> ir.Value:
        new = make_node(op, inputs, attrs, self.editor.unique(f"{self.label}_bnfold_observe_{name or op.lower()}"))
        new.outputs[0].name = new.name
        self.nodes.append(new)
        return new.outputs[0]

    def ints(self, values: list[int]) -> ir.Value:
        return self.editor.constant(np.asarray(values), ir.DataType.INT64, "bnfold_observe_ints")

    def reduce_mean(self, value: ir.Value) -> ir.Value:
        """ReduceMean over axes 0 and 2 of a [N, C, L] value, keeping dims (axes an attribute or, from opset
        18, an input)."""
        keep = ir.AttrInt64("keepdims", 1)
        if self.opset >= REDUCE_AXES_AS_INPUT:
            return self.add("ReduceMean", [value, self.ints([0, 2])], [keep])
        return self.add("ReduceMean", [value], [ir.AttrInt64s("axes", [0, 2]), keep])


def _observe(node: ir.Node, model: ir.Model, editor: GraphEditor) -> Observed:
    """Replace ``node`` by the batch-statistics form above; its mean, var and input shape become graph outputs."""
    label, x = node_label(node), node.inputs[0]
    assert x is not None  # batchnorm_nodes checked the inputs
    b = _Builder(editor, label, model.opset_imports.get("", 0))
    flat = b.add("Reshape", [b.add("Cast", [x], [ir.AttrInt64("to", ir.DataType.DOUBLE)]), b.ints([0, 0, -1])])
    mean_k = b.reduce_mean(flat)
    centred = b.add("Sub", [flat, mean_k])
    var_k = b.reduce_mean(b.add("Mul", [centred, centred]))
    mean = b.add("Reshape", [mean_k, b.ints([-1])], name="mean")
    var = b.add("Reshape", [var_k, b.ints([-1])], name="var")
    shape = b.add("Shape", [x], name="shape")
    stat_type = _stat_type(node)
    casts = [b.add("Cast", [v], [ir.AttrInt64("to", stat_type)]) for v in (mean, var)]
    _replace_bn(editor, node, [*b.nodes, _inference_bn(node, casts[0], casts[1])])
    for value, dtype in ((mean, ir.DataType.DOUBLE), (var, ir.DataType.DOUBLE), (shape, ir.DataType.INT64)):
        value.type, value.shape = ir.TensorType(dtype), ir.Shape([None])
        model.graph.outputs.append(value)
    return Observed(label, mean.name or "", var.name or "", shape.name or "")


def _stat_type(node: ir.Node) -> ir.DataType:
    mean = constant_array(node.inputs[3])
    if mean is not None:
        return ir.DataType.from_numpy(mean.dtype)
    scale = constant_array(node.inputs[1])
    assert scale is not None  # batchnorm_nodes checked it
    return ir.DataType.from_numpy(scale.dtype)


def _inference_bn(node: ir.Node, mean: ir.Value | None, var: ir.Value | None) -> ir.Node:
    """A BN node like ``node`` in inference mode (one output), reading ``mean`` and ``var`` as its statistics."""
    attrs = [a for a in node.attributes.values() if a.name != "training_mode"]
    inputs = [*node.inputs[:3], mean, var]
    return ir.Node("", BN_OP, inputs, attributes=attrs, num_outputs=1, name=node.name, version=node.version)


def _replace_bn(editor: GraphEditor, node: ir.Node, new_nodes: list[ir.Node]) -> None:
    """``new_nodes`` (the last a BN) stand in for ``node``; its training outputs leave the graph's outputs."""
    extra = [v for v in node.outputs[1:] if v is not None]
    outputs = editor.graph.outputs
    for value in extra:
        while value in outputs:
            outputs.remove(value)
    editor.replace([node], new_nodes, node.outputs[0])


def with_statistics(
    model: onnx.ModelProto, statistics: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` with every BN in inference mode; with ``statistics`` (mean, var per BN in graph order,
    float64), those replace the file's own, cast once to the statistics' own type."""
    ir_model = ir.serde.deserialize_model(model)
    editor = GraphEditor(ir_model, {})
    nodes = batchnorm_nodes(ir_model, "--recalibrate")
    if statistics is not None and len(statistics) != len(nodes):
        raise ExportError(f"bnfold bug: {len(statistics)} sets of statistics for {len(nodes)} BatchNormalization nodes")
    for i, node in enumerate(nodes):
        mean, var = node.inputs[3], node.inputs[4]
        if statistics is not None:
            dtype, base = _stat_type(node), node_label(node)
            mean = editor.constant(statistics[i][0], dtype, f"{base}_bnfold_population_mean")
            var = editor.constant(statistics[i][1], dtype, f"{base}_bnfold_population_var")
        _replace_bn(editor, node, [_inference_bn(node, mean, var)])
    return ir.serde.serialize_model(ir_model)
