"""ONNX files in and out: load with external data, save with external data when large or asked, check input.

``check_onnx_input`` refuses, with one line naming the cause, a model that fails ``onnx.checker``, has no or
several graph inputs (initializers listed as inputs do not count), or holds BatchNormalization in training mode.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from contracts.errors import first_line
from export.errors import ExportError
from export.folding.onnx_bn import BN_OP, node_label, opset_of, training_reason

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1  # a serialised ModelProto cannot be larger; weights beyond it must go external


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` with any external data (resolved next to the file) loaded into it."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf DecodeError, missing external data file, ...
        raise ExportError(f"{path}: cannot be read as an ONNX model ({type(exc).__name__}: {exc})") from exc


def save_onnx(model: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> None:
    """Write ``model`` to ``path``; weights go to ``<name>.data`` beside it when asked, or (None) past 2 GB.

    ``model`` itself is not changed (onnx's writer moves the data out of the proto, so a copy is written).
    """
    path = Path(path)
    if external_data is None:
        external_data = model.ByteSize() >= PROTOBUF_LIMIT
    if not external_data:
        onnx.save_model(model, str(path))
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(
        copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data"
    )
    logger.info("wrote %s with external data %s.data", path, path.name)


def check_onnx_input(model: onnx.ModelProto, path: str | Path | None = None, training_ok: bool = False) -> None:
    """Raise ExportError (one line) unless ``model`` is a valid single-input graph in inference mode.

    ``training_ok``: BN in training mode is accepted (``--recalibrate`` converts it to inference mode).

    ``path``: the file the model came from. onnx.checker cannot take a model of 2 GB or more in memory: such a
    model is checked from ``path``, or from a temporary copy with external data when there is no file.
    """
    where = str(path) if path is not None else "ONNX model"
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        elif path is not None:
            onnx.checker.check_model(str(path))
        else:
            with tempfile.TemporaryDirectory(prefix="bnfold-check-") as tmp:
                save_onnx(model, Path(tmp) / "model.onnx", external_data=True)
                onnx.checker.check_model(str(Path(tmp) / "model.onnx"))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ExportError(f"{where} fails onnx.checker: {first_line(exc)}") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ExportError(f"{where} has no graph input (initializers aside); bnfold serves models with at least one")
    if training_ok:
        return
    ir_model = ir.serde.deserialize_model(model)
    for node in ir.traversal.RecursiveGraphIterator(ir_model.graph):
        if node.op_type == BN_OP and node.domain == "":
            reason = training_reason(node, opset_of(node, ir_model))
            if reason:
                raise ExportError(f"{where}: BatchNormalization {node_label(node)!r} is in training mode: {reason}")
