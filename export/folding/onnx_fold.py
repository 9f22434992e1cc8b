"""Fold BatchNormalization inside an ONNX graph: ``fold_onnx(model_proto) -> (model_proto, FoldReport)``.

Pattern and result, per inference-mode BatchNormalization node (opset 7 to 15; see ``export.folding.onnx_bn``), tried
in this order:

    1. L -> BN  ==>  L'     L is Conv (any group, with or without bias), ConvTranspose (any group), Gemm (any
                            transB, alpha, beta) or MatMul (becomes Gemm with transB=0).
       Preconditions: (1) L's output feeds only BN and is no graph output; (2) L's weight and bias are
       constants no caller can override (initializer or Constant, not a graph input); (3) BN's statistics are
       per channel and BN's channels are L's output channels; (4) for MatMul, its output is known to be 2-D.
    2. BN -> L  ==>  L'     L is Conv with no padding read (pads all 0, auto_pad NOTSET or VALID) or Gemm with
                            transA=0, reading BN's output as its data input.
       Preconditions: (1) BN's output feeds only L and is no graph output; (2) as 1.(2); (3) BN's channels are
       L's input channels.
    3. BN -> Conv with padding  ==>  Add(x, T') -> Conv'     T' = t / s shaped [C, 1, ...]; or, asked for
       (``padded="bias-map"``) and with BN's input size fixed, 3'. Conv'(x, no bias) -> Add(., M).
       Preconditions: as 2., and every s is non-zero (gamma = 0 somewhere: lowered, with that reason).
    4. otherwise  ==>  Mul(x, S) -> Add(., T)   S, T shaped [C, 1, ...] to broadcast over axis 1 (or BN's own
                            [C, D1, ...] for spatial=0); needs x's rank (graph shape or shape inference).

Math (float64, cast once to the weight's dtype), with BN(y) = s * y + t per channel,
s = gamma / sqrt(var + eps), t = beta - mean * s (``export.folding.bn_math.scale_shift``):

    1. Conv:  W'[o] = W[o] * s[o],  b' = b * s + t.  ConvTranspose, weight [C_in, C_out/g, k...]: output channel
       o = g * (C_out/g) + j is weight[g*(C_in/g):(g+1)*(C_in/g), j], scaled by s[o].
       Gemm Y = alpha * A @ B + beta * C:  B'[:, n] = B[:, n] * s[n] (B as [K, N]),  C' = beta * C * s + t,
       beta' = 1.  MatMul: the same with alpha = 1 and no C.
    2. Conv:  W'[o, c] = W[o, c] * s[c],  b'[o] = b[o] + sum_{c,k} W[o, c, k] * t[c]  (exact only without
       padding: a padded position holds 0, not t).  Gemm:  B'[k, :] = s[k] * B[k, :],
       C' = beta * C + alpha * t @ B,  beta' = 1.
    3. Zero padding holds 0 = s * 0, so Conv_W(pad0(s * x + t)) = Conv_W(pad0(s * (x + t / s))) =
       Conv_{W'}(pad0(x + t / s)) with W'[o, c] = W[o, c] * s[c] (grouped as in 2.) and b unchanged: exact
       wherever every s is non-zero; one per-channel Add is left instead of a Mul and an Add.
       3'. By linearity Conv_W(pad0(s * x + t)) = Conv_{W'}(pad0(x)) + M, M = Conv_W(pad0(t)) + b, a constant
       [C_out, H_out, ...] map for the one input size (computed in float64 by the oracle): it replaces b.
    4. S = s, T = t: exact, two ops.

Edits are copy-on-write: new weights are new initializers, so an initializer shared with other nodes is never
changed; inputs and outputs keep their names (a folded node producing a graph output takes the BN output's
name). The input ModelProto is not modified.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from export.errors import ExportError
from export.folding.onnx_bn import BN_OP, BnAffine, node_label, opset_of, read_bn
from export.folding.onnx_edit import GraphEditor, inferred_dims
from export.folding.onnx_measure import measure_rows
from export.folding.onnx_rules import (
    fold_bias_map,
    fold_following,
    fold_padded,
    fold_preceding,
    lower,
    why_not_following,
    why_not_padded,
    why_not_preceding,
)
from export.graph.inspect import require_no_batchnorm
from export.report import PADDED, PADDED_MAP, PADDED_MAP_NOTE, PADDED_MODES, PADDED_NOTE, FoldReport, FoldRow

logger = logging.getLogger(__name__)


def fold_onnx(
    model: onnx.ModelProto, sample: np.ndarray | None = None, padded: str = "add"
) -> tuple[onnx.ModelProto, FoldReport]:
    """A copy of ``model`` with no BatchNormalization left, and one report row per BN node.

    ``padded``: a BN before a zero-padded Conv keeps its shift as an Add before it ("add"), or, where BN's input
    size is fixed, as a bias map after the conv ("bias-map"; pattern 3').

    With ``sample`` (an input batch), each row also gets the difference its site shows between the original
    and the folded graph in ONNX Runtime (``export.folding.onnx_measure``); without it those stay 0.
    Raises ExportError (naming the node) for BN in training mode, with consumed extra outputs, with
    non-constant statistics, inside a subgraph or function, or whose rank is needed and unknown.
    """
    ir_model = ir.serde.deserialize_model(model)
    _refuse_nested(ir_model)
    if padded not in PADDED_MODES:
        raise ExportError(f"unknown padded-conv fold {padded!r}; expected one of {', '.join(PADDED_MODES)}")
    dims = inferred_dims(ir.serde.deserialize_model(model))
    editor = GraphEditor(ir_model, {name: len(d) for name, d in dims.items()}, dims)
    bns = [read_bn(node, opset_of(node, ir_model)) for node in ir_model.graph if _is_bn(node)]
    # every fold into a preceding layer first: a later fold into a FOLLOWING layer then names the tensor that
    # layer's output keeps in both graphs (a BN after that layer would otherwise take its output's name away)
    done = {i: _fold_preceding(bn, editor) for i, bn in enumerate(bns)}
    results = [done[i] or _fold_one(bn, editor, padded) for i, bn in enumerate(bns)]
    report, kept = FoldReport(rows=[row for row, _ in results]), [name for _, name in results]
    for row in report.rows:
        logger.debug("%s: %s into %s", row.bn, row.action, row.target)
    folded = ir.serde.serialize_model(ir_model)
    require_no_batchnorm(folded)  # a bug, not a user error: every BN above was folded or lowered
    if sample is not None:
        measure_rows(model, folded, report, kept, sample)
    logger.info("%s", report.summary())
    return folded, report


def _fold_preceding(bn: BnAffine, editor: GraphEditor) -> tuple[FoldRow, str] | None:
    """Fold ``bn`` into the layer before it if it can: the row and the tensor name kept, else None."""
    before = why_not_preceding(bn, editor)
    if isinstance(before, str):
        return None
    bn_out = bn.node.outputs[0].name or ""
    target = fold_preceding(bn, before, editor)
    return FoldRow(bn.label, "folded-into-preceding", target, f"{before.op} output feeds only this BN"), bn_out


def _fold_one(bn: BnAffine, editor: GraphEditor, mode: str) -> tuple[FoldRow, str]:
    """Fold ``bn`` (which cannot go into the layer before it) into the layer after it, else lower it."""
    bn_out = bn.node.outputs[0].name or ""
    before = why_not_preceding(bn, editor)
    assert isinstance(before, str)  # the first pass folded every BN that could go into its preceding layer
    after = why_not_following(bn)
    if not isinstance(after, str):
        layer_out = after.node.outputs[0].name or ""
        target = fold_following(bn, after, editor)
        return FoldRow(bn.label, "folded-into-following", target, f"before: {before}"), layer_out
    padded = why_not_padded(bn)
    if not isinstance(padded, str):
        layer_out, why = padded.node.outputs[0].name or "", f"before: {before}; after: {after}"
        spatial = editor.static_spatial(bn.node.inputs[0]) if mode == "bias-map" and bn.node.inputs[0] else None
        if spatial is not None:
            target = fold_bias_map(bn, padded, editor, spatial)
            return FoldRow(bn.label, PADDED_MAP, target, f"{why}; {PADDED_MAP_NOTE}"), layer_out
        size = "; its input size is not fixed, so no bias map" if mode == "bias-map" else ""
        target = fold_padded(bn, padded, editor)
        return FoldRow(bn.label, PADDED, target, f"{why}; {PADDED_NOTE}{size}"), layer_out
    target = lower(bn, editor)
    why = f"before: {before}; after: {after}" + (f" and {padded}" if "padding" in after else "")
    return FoldRow(bn.label, "lowered-to-scale-shift", target, why), bn_out


def _is_bn(node: ir.Node) -> bool:
    return node.op_type == BN_OP and node.domain == ""


def _refuse_nested(model: ir.Model) -> None:
    """BN inside an If/Loop/Scan body or a model-local function is not folded: say so rather than skip it."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if _is_bn(node) and node.graph is not model.graph:
            raise ExportError(
                f"BatchNormalization {node_label(node)!r} is inside a subgraph; only the main graph is folded"
            )
    for function in model.functions.values():
        if any(_is_bn(n) for n in function):
            raise ExportError(f"BatchNormalization inside function {function.name!r}; inline functions first")
