"""A model version's proof for the page, drawn from the ``export_report.json`` that ``bnfold-export`` wrote.

Only what the page shows is kept: the fold table (one row per BatchNorm: action, target, error), the
verification checks as error against bound, the top-1 agreement, and for int8 the gate and the most
sensitive layers. A missing or unreadable report is said in ``note``; nothing here raises.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
SENSITIVE_LAYERS = 5  # int8 layers shown, most sensitive (most added noise) first


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else None (JSON has no infinity; a non-finite error fails its check anyway)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _check(check: dict[str, Any]) -> dict[str, Any]:
    """One check: its error (the deciding max) and bound, or just its verdict and detail when it has none."""
    candidate = check.get("candidate") or {}
    original = check.get("original") or {}
    error = _number(candidate.get("max"))
    bound = _number(check.get("bound"))
    if error is None or bound is None or bound <= 0:
        error = bound = None  # a verdict without figures (batch invariance, top-1 agreement)
    return {
        "name": str(check.get("name", "")),
        "passed": bool(check.get("passed")) and not (error is not None and bound is not None and error > bound),
        "samples": check.get("samples"),
        "error": error,
        "bound": bound,
        "original": _number(original.get("max")),
        "detail": str(check.get("detail", "")),
    }


def _agreement(checks: list[dict[str, Any]]) -> float | None:
    for check in checks:
        share = _number((check.get("extra") or {}).get("agreement"))
        if share is not None:
            return share
    return None


def _int8(section: dict[str, Any]) -> dict[str, Any]:
    rated = [la for la in section.get("layers", []) if _number(la.get("added_noise_db")) is not None]
    rated.sort(key=lambda la: la["added_noise_db"], reverse=True)
    return {
        "gate": section.get("gate", {}),
        "calibration": section.get("calibration", {}),
        "checks": [_check(c) for c in section.get("verification", [])],
        "most_sensitive_layer": section.get("most_sensitive_layer"),
        "layers": [
            {k: la.get(k) for k in ("layer", "op", "added_noise_db", "output_sqnr_db", "weight_sqnr_db")}
            for la in rated[:SENSITIVE_LAYERS]
        ],
    }


def proof(report: dict[str, Any]) -> dict[str, Any]:
    """The page's view of one ``export_report.json`` document."""
    fold = report.get("fold", {})
    checks = report.get("verification", [])
    return {
        "precision": report.get("precision", "float32"),
        "rule": (report.get("tolerance") or {}).get("rule", ""),
        "fold": [
            {k: row.get(k) for k in ("bn", "action", "target", "max_abs_diff", "max_rel_diff", "reason")}
            for row in fold.get("rows", [])
        ],
        "fold_totals": fold.get("totals", {}),
        "checks": [_check(c) for c in checks],
        "top1_agreement": _agreement(checks),
        "int8": _int8(report["int8"]) if isinstance(report.get("int8"), dict) else None,
        "warnings": [str(w) for w in report.get("warnings", [])],
    }


def read_proof(version_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """(proof, note) for the version in ``version_dir``; ``note`` says why there is none."""
    path = version_dir / "export_report.json"
    if not path.is_file():
        return None, f"no export_report.json in {version_dir}: this version was not written by bnfold-export"
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            raise ValueError(f"expected a JSON object, got {type(document).__name__}")
        return proof(document), ""
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        logger.warning("%s: unreadable export report: %s", path, exc)
        return None, f"{path} is unreadable: {exc}"


def source(metadata: dict[str, Any]) -> dict[str, str]:
    """Where the version came from (from its ONNX metadata): a training checkpoint, a torch factory or an ONNX
    file."""
    model = metadata.get("bnfold.model") or {}
    checkpoint = metadata.get("bnfold.source_checkpoint") or {}
    if checkpoint.get("path"):
        return {"kind": "checkpoint", "detail": str(checkpoint["path"])}
    if model.get("factory"):
        return {"kind": "torch factory", "detail": str(model["factory"])}
    if model.get("source_onnx"):
        return {"kind": "ONNX file", "detail": str(model["source_onnx"])}
    return {"kind": "unknown", "detail": "no bnfold provenance in the model's metadata"}
