"""BN before a zero-padded conv: today's lowering (Mul + Add) vs the shift as one Add vs the bias map, served.

Graph: Conv(3 -> C, pad 1) -> ReLU -> BN -> Conv(C -> C, pad 1), input N x 3 x S x S (fixed size, so the bias
map applies). The three folded graphs run in ONNX Runtime at ORT_ENABLE_ALL (what bnfold-serve runs), in
interleaved rounds (order alternating), each round the mean of ``--runs`` calls; the medians are reported with
their ratio to the lowered graph. Usage:  PYTHONPATH=. .venv/bin/python benchmarks/padded_bn_bench.py

Figures (2026-12-04, defaults: C=64, 56 x 56, batch 8, CPU; two runs on a 2-core machine shared by six busy
sessions, so noisy): lowered 9.58 / 9.66 ms; shift as one Add 0.920 / 0.964 of that; bias map 0.881 / 0.840.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import export.folding.onnx_fold as onnx_fold
from export.folding.onnx_fold import fold_onnx
from export.verification.checks import ort_session


def graph(channels: int, size: int, batch: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    body = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["n"]),
        helper.make_node("Conv", ["n", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    c = channels
    inits = {"w1": rng.normal(size=(c, 3, 3, 3)) / 5, "g": rng.uniform(0.5, 2, c), "b": rng.normal(size=c),
             "m": rng.normal(size=c), "v": rng.uniform(0.5, 2, c), "w2": rng.normal(size=(c, c, 3, 3)) / 20,
             "b2": rng.normal(size=c)}  # fmt: skip
    io_x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])
    io_y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c, size, size])
    tensors = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in inits.items()]
    g = helper.make_graph(body, "padded_bn", [io_x], [io_y], tensors)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def folded_three_ways(original: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    real = onnx_fold.why_not_padded
    onnx_fold.why_not_padded = lambda bn: "forced: today's lowering"  # type: ignore[assignment]
    try:
        lowered, _ = fold_onnx(original)
    finally:
        onnx_fold.why_not_padded = real
    return {"lowered": lowered, "add": fold_onnx(original)[0], "bias-map": fold_onnx(original, None, "bias-map")[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    models = folded_three_ways(graph(args.channels, args.size, args.batch))
    sessions = {k: ort_session(m.SerializeToString(), "enable_all") for k, m in models.items()}
    x = np.random.default_rng(1).normal(size=(args.batch, 3, args.size, args.size)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for rnd in range(args.rounds):
        for k, s in list(sessions.items())[:: 1 if rnd % 2 else -1]:
            s.run(None, {"x": x})
            start = time.perf_counter()
            for _ in range(args.runs):
                s.run(None, {"x": x})
            times[k].append((time.perf_counter() - start) / args.runs)
    base = float(np.median(times["lowered"]))
    for k, v in times.items():
        ops = [n.op_type for n in models[k].graph.node]
        print(f"{k:9s} median {np.median(v) * 1e3:.2f} ms  ratio {np.median(v) / base:.3f}  ops {ops}")


if __name__ == "__main__":
    main()
