"""Export benchmark: a full-size ResNet-50 (3x224x224, 1000 classes) folded, exported and verified, from a torch
module and from an ONNX file that still holds BatchNormalization; the time of every step and check.

    .venv/bin/python benchmarks/export_bench.py [--samples 16] [--out export_bench.json]

The network is torchvision's ResNet-50 layout, written in tests/export/families.py (torchvision does not import
on the CPU build of torch), with population statistics calibrated from random images. Figures are written
down in benchmarks/export_bench.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.emit.from_onnx import export_onnx_graph
from export.emit.from_torch import export_onnx
from export.report import ExportReport
from tests.export.families import calibrated, resnet50_layout

SHAPE = (3, 224, 224)


def summary(kind: str, report: ExportReport, wall: float) -> dict[str, Any]:
    checks = {c.name: {"seconds": round(c.seconds, 2), "ratio": round(c.ratio, 3), "passed": c.passed}
              for c in report.checks}  # fmt: skip
    return {"input": kind, "wall_s": round(wall, 1), "steps_s": {k: round(v, 1) for k, v in report.timings.items()},
            "checks": checks, "bn_layers": report.fold.totals["batchnorm_layers"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16, help="random inputs per check (default 16)")
    p.add_argument("--out", type=Path, default=Path("export_bench.json"), help="where to write the figures as JSON")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    model = calibrated(resnet50_layout(64, classes=1000), SHAPE)
    example = (torch.randn(2, *SHAPE),)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = export_onnx(model, example, Path(tmp) / "torch.onnx", random_samples=args.samples)
        results.append(summary("torch module", report, time.perf_counter() - start))
        buffer = io.BytesIO()  # the legacy exporter without constant folding keeps every BatchNormalization
        torch.onnx.export(model, example, buffer, dynamo=False, do_constant_folding=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}})  # fmt: skip
        proto = onnx.load_from_string(buffer.getvalue())
        start = time.perf_counter()
        report = export_onnx_graph(proto, Path(tmp) / "onnx.onnx", random_samples=args.samples)
        results.append(summary("ONNX file with BatchNormalization", report, time.perf_counter() - start))
    text = json.dumps(
        {"model": "ResNet-50 3x224x224, 1000 classes", "samples": args.samples, "runs": results}, indent=2
    )
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
