"""``export_onnx_graph``: an ONNX file from any exporter in, a folded and verified ONNX file out.

The same steps as ``export_onnx`` for a torch module: fold (``export.folding.onnx_fold``) -> reference outputs ->
write -> verify. The float32 original is the unmodified graph in ONNX Runtime at ORT_DISABLE_ALL; the oracle is
a float64 copy of the same graph (``export.verification.onnx_oracle``). Input and output names are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.emit.from_torch import CheckInputs, references, staged_file, verify_file
from export.folding.onnx_fold import fold_onnx
from export.graph.files import check_onnx_input, save_onnx
from export.graph.inspect import add_metadata, graph_io
from export.report import ExportReport, stopwatch
from export.verification.checks import FLOAT32, ort_session, session_runner
from export.verification.onnx_oracle import onnx_float64_oracle

logger = logging.getLogger(__name__)


def export_onnx_graph(
    model: onnx.ModelProto,
    path: Path,
    *,
    metadata: dict[str, Any] | None = None,
    samples: np.ndarray | None = None,
    validation: np.ndarray | None = None,
    random_samples: int = 32,
    seed: int = 0,
    input_checked: bool = False,
    padded: str = "add",
) -> ExportReport:
    """Fold every BatchNormalization of ``model``, write it to ``path`` and verify it against float64.

    ``input_checked``: ``model`` already passed :func:`export.graph.files.check_onnx_input` (as every
    ``bnfold-export --onnx`` job has), so onnx.checker need not run over it again.
    """
    if not input_checked:
        check_onnx_input(model)
    input_name, output_name, shape = graph_io(model)
    inputs = CheckInputs.build(shape, samples, validation, random_samples, seed)
    timings: dict[str, float] = {}
    with stopwatch(timings, "fold"):
        folded, fold_report = fold_onnx(model, next(iter(inputs.groups.values()))[:8], padded)
    original = session_runner(ort_session(model.SerializeToString(), "disable_all"), input_name, output_name)
    oracle = onnx_float64_oracle(model)
    with stopwatch(timings, "references (float64 oracle, float32 original)"):
        refs = references(inputs, original, oracle)
    with staged_file(Path(path)) as tmp:
        add_metadata(folded, {**(metadata or {}), "bnfold.fold_summary": fold_report.totals})
        save_onnx(folded, tmp)
        with stopwatch(timings, "onnx checks"):
            names = (input_name, output_name)
            report = verify_file(tmp, fold_report, refs, inputs, (original, oracle), names, FLOAT32)
        report.path, report.timings = Path(path), timings
        report.require_passed()
    logger.debug("exported %s from an ONNX graph", path)
    return report
