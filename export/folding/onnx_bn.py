"""Read an ONNX BatchNormalization node (opset 7 to 15) as the affine map ``x * s + t`` it is at inference.

What each opset version means, and what bnfold accepts:

    7, 8     attribute ``spatial`` (default 1). spatial=1: statistics have shape [C], one per channel.
             spatial=0: statistics have shape [C, D1, ..., Dn], one per element (ONNX Runtime reads them
             so); such a BN can only be lowered to Mul+Add, never folded into a layer.
    7 .. 13  outputs Y, mean, var, saved_mean, saved_var; the spec says the last four exist only in training
             mode, and ONNX Runtime indeed normalises with the batch's statistics when any is present. A
             node with more than one non-empty output is therefore refused as training mode.
    14, 15   attribute ``training_mode`` (default 0); 1 is refused. Outputs running_mean/running_var with
             training_mode=0 are not valid ONNX; unused ones are dropped, consumed ones refused.

Training mode is refused here; ``--recalibrate`` (``export.recalibration.training_form``) converts such a node
to inference mode, with statistics recomputed by Algorithm 2, before this module reads it.

``s`` and ``t`` come from ``export.folding.bn_math.scale_shift``, the one formula for BN's scale and shift (float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from export.errors import ExportError
from export.folding.bn_math import scale_shift

BN_OP = "BatchNormalization"
FIRST_OPSET = 7
PASS_THROUGH = ("Identity", "Transpose")  # ops a constant is read through


def node_label(node: ir.Node) -> str:
    """A name to show for ``node``: its own, else its first output's."""
    out = node.outputs[0].name if node.outputs else None
    return node.name or out or f"<unnamed {node.op_type}>"


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's array if it is a constant no caller can override: an initializer or a Constant node, possibly
    behind Identity or Transpose nodes (torch's exporter reads deduplicated initializers through Identity, and
    without constant folding a Linear weight through Transpose)."""
    if value is None or value.is_graph_input():
        return None
    producer = value.producer()
    if producer is not None and producer.domain == "" and producer.op_type in PASS_THROUGH:
        inner = constant_array(producer.inputs[0] if producer.inputs else None)
        if inner is None or producer.op_type == "Identity":
            return inner
        return np.transpose(inner, producer.attributes.get_ints("perm", None))
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else np.asarray(tensor.numpy())


def opset_of(node: ir.Node, model: ir.Model) -> int:
    """The default-domain opset that governs ``node``."""
    return node.version or model.opset_imports.get("", 0)


def training_reason(node: ir.Node, opset: int) -> str | None:
    """Why ``node`` computes with batch statistics (training mode), or None when it is in inference mode."""
    if opset >= 14:
        if node.attributes.get_int("training_mode", 0) == 1:
            return (
                "training_mode=1 (it normalises with batch statistics; export the model in eval mode, or pass "
                "--recalibrate DIR to recompute its statistics and convert it)"
            )
        return None
    extra = [v.name for v in node.outputs[1:] if v is not None and v.name]
    if extra:
        return (
            f"it has training outputs {extra} (at opset {opset} outputs beyond Y mean training mode, "
            "where it normalises with batch statistics; export the model in eval mode, or pass --recalibrate DIR "
            "to recompute its statistics and convert it)"
        )
    return None


@dataclass
class BnAffine:
    """One BN node as ``x * s + t``: s, t float64 of shape [C] (per channel) or [C, D...] (spatial=0)."""

    node: ir.Node
    s: np.ndarray
    t: np.ndarray
    label: str
    dtype: ir.DataType  # the scale's type: what a lowered Mul/Add uses when x's type is not recorded

    @property
    def per_channel(self) -> bool:
        return self.s.ndim == 1

    @property
    def channels(self) -> int:
        return int(self.s.shape[0])


def read_bn(node: ir.Node, opset: int) -> BnAffine:
    """The affine map of an inference-mode BN node; ExportError names the node and the cause otherwise."""
    label = node_label(node)
    if opset < FIRST_OPSET:
        raise ExportError(f"BatchNormalization {label!r} is at opset {opset}; bnfold reads opsets 7 to 15")
    reason = training_reason(node, opset)
    if reason:
        raise ExportError(f"BatchNormalization {label!r} is in training mode: {reason}")
    consumed = [v.name for v in node.outputs[1:] if v is not None and (v.uses() or v.is_graph_output())]
    if consumed:
        raise ExportError(f"BatchNormalization {label!r}: extra outputs {consumed} are consumed; cannot fold")
    arrays = _statistics(node, label)
    eps = node.attributes.get_float("epsilon", 1e-5)
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64) for a in arrays)
    s, t = scale_shift(gamma, beta, mean, var, eps)
    return BnAffine(node, s, t, label, ir.DataType.from_numpy(arrays[0].dtype))


def _statistics(node: ir.Node, label: str) -> list[np.ndarray]:
    """scale, B, mean, var as arrays; ExportError when one is missing or not a constant."""
    if len(node.inputs) < 5:
        raise ExportError(f"BatchNormalization {label!r} has {len(node.inputs)} inputs; expected 5")
    arrays = []
    for name, value in zip(("scale", "B", "mean", "var"), node.inputs[1:5], strict=True):
        array = constant_array(value)
        if array is None:
            shown = value.name if value is not None else "missing"
            raise ExportError(f"BatchNormalization {label!r}: input {name} ({shown}) is not a constant initializer")
        arrays.append(array)
    return arrays
