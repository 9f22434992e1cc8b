"""An ONNX graph from any exporter -> a folded ONNX ``Candidate``; and ``export_onnx_graph``, as one file.

Fold with ``export.folding.onnx_fold``. The float32 original is the unmodified graph in ONNX Runtime at
ORT_DISABLE_ALL; the oracle is a float64 copy of the same graph (``export.verification.onnx_oracle``). Input
and output names are kept. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.emit.candidate import Candidate, write_verified
from export.folding.onnx_fold import fold_onnx
from export.graph.files import check_onnx_input
from export.graph.inspect import graph_inputs
from export.report import ExportReport, stopwatch
from export.variants.fp16_onnx import to_fp16_graph
from export.verification.checks import FLOAT16, FLOAT32, ort_session, session_runner
from export.verification.file import CheckInputs
from export.verification.onnx_oracle import onnx_float64_oracle
from training.atomic import staged_file


def onnx_candidate(
    model: onnx.ModelProto, sample: np.ndarray | None = None, *, fp16: bool = False, padded: str = "add"
) -> Candidate:
    """``model`` folded, with its original (ONNX Runtime, ORT_DISABLE_ALL) and float64 oracle as judges, on
    every input and output of the graph (``export.verification.feeds``).

    ``sample``: a few inputs on which each fold site's difference is measured for the fold report. ``fp16``:
    the half-precision variant (``export.variants.fp16_onnx``), held to fp16's tolerance. ``padded``: how a BN
    before a zero-padded conv is folded (``fold_onnx``'s).
    """
    names = ([i.name for i in graph_inputs(model)], [o.name for o in model.graph.output])
    timings: dict[str, float] = {}
    with stopwatch(timings, "fold"):
        folded, fold_report = fold_onnx(model, sample=sample, padded=padded)
    if fp16:
        folded = to_fp16_graph(folded)
    original = session_runner(ort_session(model.SerializeToString(), "disable_all"), *names)
    oracle = onnx_float64_oracle(model, names[1])
    tol = FLOAT16 if fp16 else FLOAT32
    return Candidate(folded, fold_report, original, oracle, names, tol, timings=timings)


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
    inputs = CheckInputs.build(graph_inputs(model), samples, validation, random_samples, seed)
    candidate = onnx_candidate(model, inputs.first(), padded=padded)
    with staged_file(Path(path)) as tmp:
        report = write_verified(candidate, tmp, inputs, metadata)
        report.path = Path(path)
    return report
