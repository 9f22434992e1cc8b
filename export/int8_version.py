"""``export_int8_version``: the int8 variant of a written float32 version, added as a version of its own model.

Reads the float32 version's ``model.onnx`` and ``export_report.json`` (labels, input, provenance); writes
``<repository>/<name>/<next version>/`` with the int8 ``model.onnx`` and an ``export_report.json`` that holds
the float32 report's provenance and the int8 section (calibration, gate with its figures, verification,
per-layer error), then ``config.pbtxt`` and ``labels.txt``. A refused variant (bad input, below the gate)
leaves the repository exactly as it was: no version folder, and no model folder that was not there before.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.int8 import Int8Gate, Int8Report, quantize_int8
from export.repository import TensorSpec, check_model_name, new_version, render_config, write_model_files
from training.atomic import write_json_atomic

logger = logging.getLogger(__name__)

CARRIED = ("model", "labels", "input", "training_metrics", "bn_statistics", "provenance")


def _fp32_report(fp32_version: Path) -> dict[str, Any]:
    path = fp32_version / "export_report.json"
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read the float32 version's export report ({exc})") from exc
    missing = [key for key in ("labels", "input") if key not in report]
    if missing:
        raise ExportError(f"{path}: the export report has no {' or '.join(missing)}; export the float32 model again")
    return report


def export_int8_version(
    fp32_version: Path,
    repository: Path,
    name: str,
    calibration: np.ndarray | None,
    validation_x: np.ndarray | None,
    validation_y: np.ndarray | None,
    *,
    method: str = "minmax",
    max_batch_size: int = 64,
    max_queue_delay_us: int = 500,
    gate: Int8Gate | None = None,
) -> tuple[Path, Int8Report]:
    """Quantize, verify and gate ``fp32_version``'s model; add it as the next version of ``name``."""
    fp32 = _fp32_report(fp32_version)
    model_dir = repository / check_model_name(name)
    existed = model_dir.exists()
    inputs = fp32["input"]
    try:
        with new_version(repository, name) as (staging, version):
            report = quantize_int8(
                fp32_version / "model.onnx",
                staging / "model.onnx",
                calibration,
                method,
                validation_x,
                validation_y,
                input_name=inputs.get("name", "input"),
                gate=gate,
            )
            carried = {key: fp32[key] for key in CARRIED if key in fp32}
            document = {**carried, "path": f"{name}/{version}/model.onnx", "float32_version": str(fp32_version)}
            write_json_atomic(staging / "export_report.json", {**document, "int8": report.to_dict()})
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                model_dir.rmdir()  # only when empty: the folder new_version made for this export
        raise
    config = render_config(
        name,
        [TensorSpec(inputs.get("name", "input"), "float32", tuple(inputs["shape"]))],
        [TensorSpec("logits", "float32", (len(fp32["labels"]),))],
        max_batch_size,
        max_queue_delay_us,
        layout=inputs.get("layout", "NCHW"),
    )
    write_model_files(model_dir, config, list(fp32["labels"]))
    logger.info("wrote %s version %d: %s", model_dir, version, report.gate_line())
    return model_dir / str(version), report
