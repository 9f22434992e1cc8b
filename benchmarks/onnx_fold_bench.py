"""ONNX-input fold benchmark: a ResNet-50-layout ONNX file with all 53 BatchNormalization nodes kept.

Builds ResNet-50 (bottleneck blocks [3, 4, 6, 3], 1000 classes, random weights, BN statistics calibrated on
random data so logits stay near 1) in torch, exports it with the TorchScript exporter and
``do_constant_folding=False`` so every BN stays in the graph, then times each step of the ONNX path, in one run:
  1. load_onnx + check_onnx_input;  2. fold_onnx;  3. building the float64 oracle and one oracle call;
  4. one ONNX Runtime float32 run of the original and of the folded graph (ORT_DISABLE_ALL);
and reports the original's and the folded graph's distance from the oracle, with the rule's verdict.
Usage:  PYTHONPATH=. .venv/bin/python benchmarks/onnx_fold_bench.py [--batch 2] [--size 224] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.folding.onnx_fold import fold_onnx
from export.graph.files import check_onnx_input, load_onnx, save_onnx
from export.verification.onnx_oracle import onnx_float64_oracle


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))  # (N, 4 * width, H / stride, W / stride)


def resnet50() -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    c_in = 64
    for i, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512], strict=True)):
        for j in range(blocks):
            layers.append(Bottleneck(c_in, width, 2 if j == 0 and i > 0 else 1))
            c_in = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1000)]
    return nn.Sequential(*layers)


def calibrate(net: nn.Module, size: int) -> nn.Module:
    """Population statistics from two random batches (cumulative average), so activations stay about 1."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, size, size))
    return net.eval()


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """fn's last result and its median wall time in seconds over ``repeat`` runs."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = calibrate(resnet50(), args.size)
    example = torch.randn(args.batch, 3, args.size, args.size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=15, do_constant_folding=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.onnx"
        save_onnx(onnx.load_from_string(buffer.getvalue()), path)
        size_mb = path.stat().st_size / 1e6
        original, t_load = timed(lambda: load_onnx(path), args.repeat)
        _, t_check = timed(lambda: check_onnx_input(original, path), args.repeat)
    (folded, report), t_fold = timed(lambda: fold_onnx(original), args.repeat)
    oracle, t_oracle_build = timed(lambda: onnx_float64_oracle(original), 1)
    x = example.numpy()
    ref, t_oracle = timed(lambda: oracle(x), 1)
    y_orig, t_orig = timed(lambda: ort_run(original, x), args.repeat)
    y_fold, t_folded = timed(lambda: ort_run(folded, x), args.repeat)
    d_orig, d_fold = float(np.abs(y_orig - ref).max()), float(np.abs(y_fold - ref).max())
    scale = float(np.abs(ref).max())
    bound = 2 * d_orig + 1e-6 * scale
    versions = f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, torch {torch.__version__}"
    print(f"# {platform.machine()}, {torch.get_num_threads()} torch threads, {versions}")
    print(f"ResNet-50 ONNX file {size_mb:.1f} MB, batch {args.batch}x3x{args.size}x{args.size}; {report.summary()}")
    for name, seconds in [
        ("load_onnx", t_load), ("check_onnx_input", t_check), ("fold_onnx", t_fold),
        ("oracle build (float64 copy)", t_oracle_build), (f"oracle call ({oracle.engine})", t_oracle),
        ("ORT float32 original (incl. session)", t_orig), ("ORT float32 folded (incl. session)", t_folded),
    ]:  # fmt: skip
        print(f"{name:40s} {seconds:8.3f} s")
    verdict = "pass" if d_fold <= bound else "FAIL"
    print(f"distance to oracle: original {d_orig:.3e}, folded {d_fold:.3e}, ratio {d_fold / max(d_orig, 1e-300):.2f}; "
          f"output scale {scale:.3e}; bound {bound:.3e}: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
