"""``export_onnx``: fold, export to ONNX with a dynamic batch axis, check, verify, and only then write.

Nothing is written at ``path`` unless every check passes: the model is exported to a temporary file beside
``path`` and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.errors import ExportError, VerificationError
from export.fold import fold_batchnorm
from export.fp16 import check_fp16, to_fp16
from export.report import FoldReport
from export.verify import Check, batch_invariance, compare, ort_session, run_batched, top1_agreement
from training.atomic import public_mode

logger = logging.getLogger(__name__)

RTOL, ATOL = 1e-4, 1e-5
# fp16 keeps 11 significant bits (~5e-4 relative): its variant is held to fp16's own precision, and its top-1
# agreement may miss only near-ties (at most 0.5% of the validation split).
FP16_RTOL, FP16_ATOL, FP16_MIN_AGREEMENT = 1e-2, 1e-2, 0.995


@dataclass
class ExportReport:
    """What an export wrote and every figure that proved it."""

    path: Path
    fold: FoldReport
    checks: list[Check] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    opset: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    precision: str = "float32"
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "fold": self.fold.to_dict(),
            "verification": [c.to_dict() for c in self.checks],
            "precision": self.precision,
            "tolerance": {"rtol": RTOL, "atol": ATOL}
            if self.precision == "float32"
            else {"rtol": FP16_RTOL, "atol": FP16_ATOL, "min_top1_agreement": FP16_MIN_AGREEMENT},
            "warnings": self.warnings,
            "opset": self.opset,
            "onnx_ops": self.nodes,
        }

    def verification_table(self) -> str:
        return "\n".join(c.line() for c in self.checks)


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


def _torch_onnx_export(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_name: str,
    output_name: str,
    opset: int | None,
) -> None:
    """The dynamo exporter, batch axis dynamic; its console chatter goes to the debug log."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                opset_version=opset,
            )
    except Exception as exc:  # the exporter raises many types; all mean "this module does not export"
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {type(exc).__name__}: {exc}") from exc
    finally:
        logger.debug("torch.onnx.export: %s", chatter.getvalue())


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    metadata: dict[str, Any] | None = None,
    samples: torch.Tensor | None = None,
    validation: torch.Tensor | None = None,
    random_samples: int = 32,
    opset: int | None = None,
    seed: int = 0,
    fp16: bool = False,
) -> ExportReport:
    """Fold ``model``'s BatchNorms, export ONNX to ``path``, check it and verify it numerically.

    ``samples`` are real inputs for checks 1-3 (random inputs are always added); ``validation`` (all inputs of
    a validation split) enables the top-1 agreement check. ``fp16`` exports the half-precision variant
    (float32 input and output), held to fp16's own tolerance. ``metadata`` is embedded as ONNX metadata_props
    (every value JSON-encoded). Raises :class:`VerificationError` and writes nothing on any breach.
    """
    path = Path(path)
    reference = copy.deepcopy(model).eval()
    folded, fold_report = fold_batchnorm(model, example_inputs)
    warnings: list[str] = []
    rtol, atol, min_agree = (RTOL, ATOL, 1.0)
    if fp16:
        warnings = check_fp16(reference, folded)
        folded = to_fp16(folded)
        rtol, atol, min_agree = (FP16_RTOL, FP16_ATOL, FP16_MIN_AGREEMENT)
    gen = torch.Generator().manual_seed(seed)
    shape = example_inputs[0].shape[1:]
    random_x = torch.randn(random_samples, *shape, generator=gen, dtype=example_inputs[0].dtype)
    check_x = torch.cat([samples[:256], random_x]) if samples is not None else random_x

    with torch.no_grad():
        ref_out = reference(check_x).numpy()
        folded_out = folded(check_x).numpy()
    checks = [compare("torch folded vs original", folded_out, ref_out, rtol, atol, "real + random inputs")]

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    public_mode(tmp)
    try:
        _torch_onnx_export(folded, example_inputs, tmp, input_name, output_name, opset)
        proto = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "bnfold.fold_summary", json.dumps(fold_report.totals)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        ops = count_ops(proto)
        if ops.get("BatchNormalization", 0):
            raise VerificationError(
                f"bnfold bug: {ops['BatchNormalization']} BatchNormalization node(s) in the ONNX graph"
            )

        session = ort_session(tmp)

        def run(x: np.ndarray) -> np.ndarray:
            return session.run([output_name], {input_name: np.ascontiguousarray(x)})[0]

        x_np = check_x.numpy()
        checks.append(
            compare(
                "onnxruntime vs original", run_batched(run, x_np), ref_out, rtol, atol, "CPU provider, ORT_DISABLE_ALL"
            )
        )
        checks.append(batch_invariance(run, x_np, atol=atol if fp16 else None))
        if validation is not None:
            with torch.no_grad():
                val_ref = torch.cat([reference(b) for b in validation.split(512)]).numpy()
            checks.append(top1_agreement(run_batched(run, validation.numpy()), val_ref, min_agree))
        precision = "float16" if fp16 else "float32"
        meta_text = {k: str(v) for k, v in (metadata or {}).items()}
        report = ExportReport(
            path, fold_report, checks, meta_text, proto.opset_import[0].version, ops, precision, warnings
        )
        if not report.passed:
            failed = "; ".join(c.line() for c in checks if not c.passed)
            raise VerificationError(f"verification failed, nothing written: {failed}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("exported %s (%d ONNX nodes, no BatchNormalization)", path, sum(ops.values()))
    return report
