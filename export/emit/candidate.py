"""The one path from a folded graph to a verified file: reference -> write -> verify.

Every source and every variant goes through ``write_verified``: a ``Candidate`` (the folded graph, its fold
report and the runners that judge it, made by ``export.emit.from_torch`` or ``export.emit.from_onnx``) is
measured against the float64 oracle on the job's inputs, written to ``path`` and verified there. The caller
commits: ``export.pipeline`` through the repository's version transaction, ``export_onnx`` and
``export_onnx_graph`` by renaming a staged file. Nothing is committed unless every check passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from export.graph.files import save_onnx
from export.graph.inspect import add_metadata
from export.report import ExportReport, FoldReport, stopwatch
from export.verification.checks import FLOAT32, Check, IONames, Reference, Runner, Tolerance
from export.verification.file import CheckInputs, references, verify_file

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A folded graph ready to be written, with the runners that judge it.

    ``original`` is the float32 original, ``oracle`` its float64 run; ``pre_checks`` (torch sources) judges
    the folded module itself on the references before any file exists.
    """

    proto: onnx.ModelProto
    fold: FoldReport
    original: Runner
    oracle: Runner
    names: IONames  # (input name(s), output name(s)) the runners of the written file use
    tolerance: Tolerance = FLOAT32
    pre_checks: Callable[[list[Reference]], list[Check]] | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def write_verified(
    candidate: Candidate, path: Path, inputs: CheckInputs, metadata: dict[str, Any] | None = None
) -> ExportReport:
    """Reference outputs, ``candidate`` written to ``path`` with ``metadata``, every check on the file.

    Raises ``VerificationError`` on any breach; ``path`` is then left for the caller to discard.
    """
    timings = candidate.timings
    with stopwatch(timings, "references (float64 oracle, float32 original)"):
        refs = references(inputs, candidate.original, candidate.oracle)
    checks = candidate.pre_checks(refs) if candidate.pre_checks is not None else []
    with stopwatch(timings, "write"):
        add_metadata(candidate.proto, {**(metadata or {}), "bnfold.fold_summary": candidate.fold.totals})
        save_onnx(candidate.proto, path)
    with stopwatch(timings, "onnx checks"):
        runners = (candidate.original, candidate.oracle)
        report = verify_file(path, candidate.fold, refs, inputs, runners, candidate.names, candidate.tolerance)
    report.path, report.warnings, report.timings = Path(path), candidate.warnings, timings
    report.checks[:0] = checks
    report.require_passed()
    logger.debug("verified %s (%d ONNX nodes, no BatchNormalization)", path, sum(report.nodes.values()))
    return report
