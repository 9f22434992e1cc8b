"""Graph edits the ONNX fold needs, on onnx-ir: fresh initializers, one node replacing several, value ranks.

Every edit is copy-on-write: a changed weight becomes a NEW initializer under a new name, so an initializer that
other nodes share is never edited in place; the old one is dropped only once nothing uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

logger = logging.getLogger(__name__)

ORPHAN_OPS = ("Constant", "Identity", "Transpose")  # producers of constants, dropped once nothing reads them


class GraphEditor:
    """Owns one graph's edits: unique names, new constants, node replacement, dropping orphaned constants."""

    def __init__(self, model: ir.Model, ranks: dict[str, int], dims: dict[str, tuple[int | None, ...]] | None = None):
        self.model = model
        self.graph = model.graph
        self.ranks = ranks
        self.dims = dims or {}  # value name -> inferred dims (None where symbolic), when the caller asked
        self._names = {v.name for v in _all_values(self.graph) if v.name}

    def unique(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``, ... whichever no value in the graph has yet."""
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def constant(self, array: np.ndarray, dtype: ir.DataType, base: str) -> ir.Value:
        """A new initializer holding float64 ``array`` cast once to ``dtype``."""
        name = self.unique(base)
        value = ir.Value(name=name, const_value=ir.tensor(array.astype(dtype.numpy()), name=name))
        self.graph.register_initializer(value)
        return value

    def rank(self, value: ir.Value) -> int | None:
        """The value's rank, from its own shape or from shape inference; None when unknown."""
        if value.shape is not None:
            return len(value.shape)
        return self.ranks.get(value.name or "")

    def static_spatial(self, value: ir.Value) -> tuple[int, ...] | None:
        """The value's dims after N and C when all are fixed numbers, else None."""
        own = tuple(d if isinstance(d, int) else None for d in value.shape.dims) if value.shape is not None else None
        dims = own or self.dims.get(value.name or "")
        spatial = tuple(d for d in (dims or ())[2:] if isinstance(d, int))
        return spatial if dims is not None and len(dims) >= 3 and len(spatial) == len(dims) - 2 else None

    def replace(self, old_nodes: Sequence[ir.Node], new_nodes: Sequence[ir.Node], old_out: ir.Value) -> None:
        """Put ``new_nodes`` where ``old_nodes`` were; the last new node's output takes over ``old_out``.

        It keeps ``old_out``'s name (so a graph output keeps its name), type and shape; constants the old nodes
        read and nothing else uses are dropped.
        """
        new_out = new_nodes[-1].outputs[0]
        new_out.name, new_out.type, new_out.shape = old_out.name, old_out.type, old_out.shape
        anchor = old_nodes[-1]
        read = [v for node in old_nodes for v in node.inputs if v is not None]
        self.graph.insert_before(anchor, new_nodes)
        ir.convenience.replace_all_uses_with(old_out, new_out, replace_graph_outputs=True)
        old_out.name = None
        self.graph.remove(old_nodes, safe=True)
        for value in read:
            self._drop_if_orphan(value)

    def _drop_if_orphan(self, value: ir.Value) -> None:
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            return
        if value.is_initializer() and value.name is not None and value.name in self.graph.initializers:
            self.graph.initializers.pop(value.name)
            return
        producer = value.producer()
        if producer is not None and producer.op_type in ORPHAN_OPS and producer.graph is self.graph:
            inputs = [v for v in producer.inputs if v is not None]
            self.graph.remove(producer, safe=True)
            for source in inputs:  # an Identity's or Transpose's own constant may now be an orphan too
                self._drop_if_orphan(source)


def _all_values(graph: ir.Graph) -> list[ir.Value]:
    values = [*graph.inputs, *graph.initializers.values()]
    for node in ir.traversal.RecursiveGraphIterator(graph):
        values.extend(v for v in node.outputs if v is not None)
    return values


def inferred_dims(model_copy: ir.Model) -> dict[str, tuple[int | None, ...]]:
    """Value name -> dims (None where symbolic) from ONNX shape inference on a throwaway copy."""
    try:
        ShapeInferencePass(check_type=False, strict_mode=False)(model_copy)
    except Exception as exc:  # inference is a hint; the folds that need a rank refuse without it
        logger.warning("ONNX shape inference failed (%s); folds that need a rank will lower instead", exc)
        return {}
    return {
        value.name: tuple(d if isinstance(d, int) else None for d in value.shape.dims)
        for value in _all_values(model_copy.graph)
        if value.name and value.shape is not None
    }


def make_node(op_type: str, inputs: Sequence[ir.Value | None], attrs: Sequence[ir.Attr], name: str | None) -> ir.Node:
    """A default-domain node with one output."""
    return ir.Node("", op_type, inputs, attributes=list(attrs), num_outputs=1, name=name)
