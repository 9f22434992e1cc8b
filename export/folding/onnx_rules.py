"""Predicates ("may this BN fold here? if not, why?") and transforms for the ONNX fold, one pair per pattern.

Pattern 3 (BN before a zero-padded Conv) is ``why_not_padded`` / ``fold_padded``.

The math is ``export.folding.bn_math``'s (``preceding_weight_bias``, ``following_weight_bias``) on float64 tensors,
cast once to the weight's dtype; ``export.folding.onnx_fold`` states the patterns, preconditions and formulas.
A predicate returns the layer to fold into, or the reason there is none (the report keeps it).
Gemm and MatMul weights are handled as a Linear-style matrix L = [N, K] (output feature first):
Gemm's B is L when transB=1 and L^T when transB=0; MatMul's constant right operand is L^T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from export.errors import ExportError
from export.folding.bn_math import following_weight_bias, preceding_weight_bias
from export.folding.onnx_bn import BnAffine, constant_array, node_label
from export.folding.onnx_edit import GraphEditor, make_node

PRECEDING_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FOLLOWING_OPS = ("Conv", "Gemm")


@dataclass
class Layer:
    """The layer a BN folds into: its node, its constant weight and (optional) constant bias."""

    node: ir.Node
    weight: np.ndarray
    bias: np.ndarray | None

    @property
    def op(self) -> str:
        return self.node.op_type

    def attr(self, key: str, default: int) -> int:
        return self.node.attributes.get_int(key, default)

    def linear(self) -> np.ndarray:
        """Gemm's or MatMul's weight as L = [N, K]."""
        return self.weight if self.op == "Gemm" and self.attr("transB", 0) == 1 else self.weight.T

    def from_linear(self, matrix: np.ndarray) -> np.ndarray:
        """L = [N, K] back into this node's B layout (MatMul becomes a Gemm with transB=0)."""
        return matrix if self.op == "Gemm" and self.attr("transB", 0) == 1 else matrix.T


def _t(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _only_use(value: ir.Value) -> tuple[ir.Node, int] | None:
    """(node, input index) of the one reader of ``value``, or None on fan-out or when it is a graph output."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node, uses[0].idx


def _layer(node: ir.Node) -> Layer | str:
    weight = constant_array(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None:
        return f"{node.op_type} {node_label(node)!r} has no constant weight"
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = constant_array(bias_value)
    if bias_value is not None and bias is None:
        return f"{node.op_type} {node_label(node)!r} has a non-constant bias"
    if node.op_type in ("Gemm", "MatMul") and (weight.ndim != 2 or (bias is not None and bias.ndim > 2)):
        return f"{node.op_type} {node_label(node)!r} has a weight or bias of unexpected rank"
    return Layer(node, weight, bias)


# ---- BN folded into the layer before it -------------------------------------------------------------------


def why_not_preceding(bn: BnAffine, editor: GraphEditor) -> Layer | str:
    """The layer before ``bn`` to fold it into, or the reason there is none."""
    if not bn.per_channel:
        return "spatial=0: per-element statistics"
    x = bn.node.inputs[0]
    producer = x.producer() if x is not None else None
    if x is None or producer is None or producer.op_type not in PRECEDING_OPS or producer.domain != "":
        return "input is not produced by Conv/ConvTranspose/Gemm/MatMul"
    if _only_use(x) != (bn.node, 0):
        return f"{node_label(producer)!r}'s output is also used elsewhere (fan-out)"
    if producer.op_type == "MatMul" and editor.rank(x) != 2:
        return "MatMul output not known to be 2-D (BN's channel axis is then not the output feature)"
    layer = _layer(producer)
    if isinstance(layer, str):
        return layer
    if layer.op == "Conv":
        out = layer.weight.shape[0]
    elif layer.op == "ConvTranspose":
        out = layer.weight.shape[1] * layer.attr("group", 1)
    else:
        out = layer.linear().shape[0]
    if out != bn.channels:
        return f"{node_label(producer)!r} has {out} output channels, BN has {bn.channels}"
    return layer


def fold_preceding(bn: BnAffine, layer: Layer, editor: GraphEditor) -> str:
    """Replace layer -> BN by one layer' node (MatMul becomes Gemm); returns the new node's label."""
    s, t = _t(bn.s), _t(bn.t)
    attrs = dict(layer.node.attributes)
    if layer.op in ("Conv", "ConvTranspose"):
        bias = layer.bias if layer.bias is not None else np.zeros(bn.channels)
        w, b = preceding_weight_bias(_t(layer.weight), _t(bias), s, t, layer.attr("group", 1), layer.op != "Conv")
        new_w = w
    else:  # Y = alpha * A @ B + beta * C  ->  BN(Y) = alpha * A @ (B s) + (beta * C * s + t)
        beta = layer.node.attributes.get_float("beta", 1.0) if layer.op == "Gemm" else 0.0
        c = beta * layer.bias if layer.bias is not None else np.zeros(bn.channels)
        w, b = preceding_weight_bias(_t(layer.linear()), _t(c), s, t, 1, False)
        new_w = layer.from_linear(w)
        attrs = attrs if layer.op == "Gemm" else {}
        attrs["beta"] = ir.AttrFloat32("beta", 1.0)
    return _emit(editor, layer, new_w, b, attrs, [layer.node, bn.node], bn.node.outputs[0])


# ---- BN folded into the layer after it --------------------------------------------------------------------


def _following_layer(bn: BnAffine) -> Layer | str:
    """The Conv or Gemm reading ``bn``'s output as its data input, with matching channels; or why there is none."""
    if not bn.per_channel:
        return "spatial=0: per-element statistics"
    use = _only_use(bn.node.outputs[0])
    if use is None:
        return "output is used by several nodes or is a graph output"
    consumer, index = use
    if consumer.op_type not in FOLLOWING_OPS or consumer.domain != "" or index != 0:
        return "output does not feed a Conv or Gemm as its data input"
    layer = _layer(consumer)
    if isinstance(layer, str):
        return layer
    if layer.op == "Conv":
        c_in = layer.weight.shape[1] * layer.attr("group", 1)
    else:
        if layer.attr("transA", 0) != 0:
            return f"Gemm {node_label(consumer)!r} has transA=1 (BN's channels would be its rows)"
        c_in = layer.linear().shape[1]
    if c_in != bn.channels:
        return f"{node_label(consumer)!r} has {c_in} input channels, BN has {bn.channels}"
    return layer


def why_not_following(bn: BnAffine) -> Layer | str:
    """The layer after ``bn`` to fold it into (pattern 2), or the reason there is none."""
    layer = _following_layer(bn)
    if not isinstance(layer, str) and layer.op == "Conv" and reads_padding(layer.node):
        return f"Conv {node_label(layer.node)!r} reads padding (a padded zero is not BN's shift)"
    return layer


def why_not_padded(bn: BnAffine) -> Layer | str:
    """The zero-padded Conv after ``bn`` to fold its scale into, its shift staying as one Add (pattern 3), or why
    not: that needs every scale non-zero, so that the shift can move in front of it."""
    layer = _following_layer(bn)
    if isinstance(layer, str):
        return layer
    if layer.op != "Conv" or not reads_padding(layer.node):
        return f"{node_label(layer.node)!r} is no padded Conv"
    zero = np.flatnonzero(bn.s == 0)
    if len(zero):
        return f"its scale is 0 in channel(s) {zero[:5].tolist()} (gamma = 0): the shift cannot move before the scale"
    return layer


def reads_padding(conv: ir.Node) -> bool:
    """Whether ``conv`` may read a padded position: any nonzero pad, or auto_pad SAME_UPPER/SAME_LOWER."""
    pads = conv.attributes.get_ints("pads", ())
    return any(pads) or conv.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID")


def fold_following(bn: BnAffine, layer: Layer, editor: GraphEditor) -> str:
    """Replace BN -> layer by one layer' node reading BN's input; returns the new node's label."""
    s, t = _t(bn.s), _t(bn.t)
    attrs = dict(layer.node.attributes)
    if layer.op == "Conv":
        bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
        w, b = following_weight_bias(_t(layer.weight), _t(bias), s, t, layer.attr("group", 1))
        new_w, new_b = w, b
    else:  # Y = alpha * (x s + t) @ B + beta * C = alpha * x @ (s B) + (beta * C + alpha * t @ B)
        matrix = layer.linear()
        w, shift = following_weight_bias(_t(matrix), np.zeros(matrix.shape[0], dtype=np.float64), s, t, 1)
        alpha = layer.node.attributes.get_float("alpha", 1.0)
        beta = layer.node.attributes.get_float("beta", 1.0)
        new_b = alpha * shift + (beta * layer.bias if layer.bias is not None else 0.0)
        new_w = layer.from_linear(w)
        attrs["beta"] = ir.AttrFloat32("beta", 1.0)
    old = [bn.node, layer.node]
    return _emit(editor, layer, new_w, new_b, attrs, old, layer.node.outputs[0], data=bn.node.inputs[0])


def fold_padded(bn: BnAffine, layer: Layer, editor: GraphEditor) -> str:
    """Replace BN -> Conv(padded) by Add(x, t/s) -> Conv' with W'[o, c] = W[o, c] * s[c]; returns the labels."""
    x = bn.node.inputs[0]
    assert x is not None  # read_bn checked the inputs
    s, zero = _t(bn.s), np.zeros(bn.channels, dtype=np.float64)
    bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
    w, b = following_weight_bias(_t(layer.weight), _t(bias), s, zero, layer.attr("group", 1))  # b: unchanged
    shape = (bn.channels, *([1] * (layer.weight.ndim - 2)))
    dtype = x.dtype if x.dtype is not None else bn.dtype
    shift = editor.constant((bn.t / bn.s).reshape(shape), dtype, f"{bn.label}_bnfold_padded_shift")
    add = make_node("Add", [x, shift], [], f"{bn.label}_bnfold_add")
    add.outputs[0].name = editor.unique(f"{bn.label}_bnfold_shifted")
    attrs = dict(layer.node.attributes)
    old = [bn.node, layer.node]
    target = _emit(editor, layer, w, b, attrs, old, layer.node.outputs[0], add.outputs[0], [add])
    return f"{add.name}+{target}"


def fold_bias_map(bn: BnAffine, layer: Layer, editor: GraphEditor, spatial: tuple[int, ...]) -> str:
    """Replace BN -> Conv(padded) by Conv'(x, W', no bias) -> Add(., M): W'[o, c] = W[o, c] * s[c] and
    M = Conv_W(pad0(t)) + b at BN's input size ``spatial``, run in float64 by the oracle; returns the labels."""
    x = bn.node.inputs[0]
    assert x is not None  # read_bn checked the inputs
    node, zero = layer.node, np.zeros(bn.channels, dtype=np.float64)
    bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
    w, _ = following_weight_bias(_t(layer.weight), _t(bias), _t(bn.s), zero, layer.attr("group", 1))
    dtype, base = ir.DataType.from_numpy(layer.weight.dtype), node.name or node_label(node)
    conv = make_node(
        "Conv",
        [x, editor.constant(w, dtype, f"{base}_bnfold_weight")],
        list(node.attributes.values()),
        node.name,
    )
    conv.outputs[0].name = editor.unique(f"{base}_bnfold_unbiased")
    bias_map = editor.constant(_conv_of_constant(layer, bn.t, bias, spatial), dtype, f"{base}_bnfold_bias_map")
    add = make_node("Add", [conv.outputs[0], bias_map], [], f"{base}_bnfold_bias_map_add")
    editor.replace([bn.node, node], [conv, add], node.outputs[0])
    return f"{node_label(conv)}+{add.name}"


def _conv_of_constant(layer: Layer, t: np.ndarray, bias: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """Conv_W(pad0(t)) + b for an input holding t[c] at every position of ``spatial``: [C_out, H_out, ...]."""
    from onnx import TensorProto, helper, numpy_helper

    from export.verification.onnx_oracle import onnx_float64_oracle

    x = np.broadcast_to(t.reshape(1, -1, *([1] * len(spatial))), (1, len(t), *spatial)).astype(np.float64)
    attrs = {a.name: a.value for a in layer.node.attributes.values()}
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    inits = [
        numpy_helper.from_array(layer.weight.astype(np.float64), "w"),
        numpy_helper.from_array(bias.astype(np.float64), "b"),
    ]
    graph = helper.make_graph(
        [conv],
        "bias_map",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return np.asarray(onnx_float64_oracle(proto)(x)[0])


def _emit(
    editor: GraphEditor,
    layer: Layer,
    weight: np.ndarray,
    bias: np.ndarray,
    attrs: dict[str, ir.Attr],
    old_nodes: list[ir.Node],
    old_out: ir.Value,
    data: ir.Value | None = None,
    before: Sequence[ir.Node] = (),
) -> str:
    """One new node (fresh weight and bias initializers), after ``before``, standing in for ``old_nodes``."""
    node = layer.node
    dtype = ir.DataType.from_numpy(layer.weight.dtype)  # cast once, to the weight's own type
    base = node.name or node_label(node)
    weight_value = editor.constant(weight, dtype, f"{base}_bnfold_weight")
    bias_value = editor.constant(bias, dtype, f"{base}_bnfold_bias")
    op = "Gemm" if layer.op == "MatMul" else layer.op
    x = data if data is not None else node.inputs[0]
    new = make_node(op, [x, weight_value, bias_value], list(attrs.values()), node.name)
    editor.replace(old_nodes, [*before, new], old_out)
    return node_label(new)


# ---- BN lowered to Mul + Add -----------------------------------------------------------------------------


def lower(bn: BnAffine, editor: GraphEditor) -> str:
    """Replace BN by Mul(x, S) -> Add(., T) with S, T broadcast over axis 1; returns the Add's label."""
    x = bn.node.inputs[0]
    assert x is not None  # read_bn checked the inputs
    if bn.per_channel:
        rank = editor.rank(x) or editor.rank(bn.node.outputs[0])
        if rank is None or rank < 2:
            raise ExportError(
                f"BatchNormalization {bn.label!r}: its input's rank is unknown (none given, none inferred), so it "
                "can neither fold nor be lowered; give the graph input a shape"
            )
        shape: tuple[int, ...] = (bn.channels, *([1] * (rank - 2)))
    else:
        shape = bn.s.shape  # spatial=0: [C, D1, ...] broadcasts against [N, C, D1, ...]
    dtype = x.dtype if x.dtype is not None else bn.dtype
    scale = editor.constant(bn.s.reshape(shape), dtype, f"{bn.label}_bnfold_scale")
    shift = editor.constant(bn.t.reshape(shape), dtype, f"{bn.label}_bnfold_shift")
    mul = make_node("Mul", [x, scale], [], f"{bn.label}_bnfold_mul")
    mul.outputs[0].name = editor.unique(f"{bn.label}_bnfold_scaled")
    add = make_node("Add", [mul.outputs[0], shift], [], f"{bn.label}_bnfold_add")
    editor.replace([bn.node], [mul, add], bn.node.outputs[0])
    return f"{mul.name}+{add.name}"
