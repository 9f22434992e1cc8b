"""fold_onnx on small graphs at opsets 9, 12 and 15: every BN gone, the right action, and outputs as close to the
original's float64 oracle as the float32 original is (run at ORT_DISABLE_ALL, so no runtime fusion hides a bug)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest

from export.folding.onnx_fold import fold_onnx
from tests.export.onnx_graphs import FOLD_NEXT, FOLD_PREV, LOWER, PADDED, bn_stats, count_ops, judge, model

OPSETS = [9, 12, 15]
BN = "BatchNormalization"
Case = Callable[[int, np.random.Generator], tuple[onnx.ModelProto, np.ndarray]]


def _x(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def conv_grouped_no_bias(opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    body = (
        "c = Conv <group = 2, pads = [1, 1, 1, 1]> (x, w)\n"
        "y = BatchNormalization <epsilon = 0.001> (c, s_g, s_b, s_m, s_v)"
    )
    m = model(
        body, opset, "float[2,4,6,6] x", "float[2,6,6,6] y", w=rng.normal(size=(6, 2, 3, 3)), **bn_stats(rng, 6, "s")
    )
    return m, _x(rng, 2, 4, 6, 6)


def conv_transpose_grouped(opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    # weight [C_in=4, C_out/group=3, 3, 3], group 2: C_out = 6
    body = "c = ConvTranspose <group = 2, strides = [2, 2]> (x, w, wb)\ny = BatchNormalization (c, s_g, s_b, s_m, s_v)"
    inits = {"w": rng.normal(size=(4, 3, 3, 3)), "wb": rng.normal(size=6), **bn_stats(rng, 6, "s")}
    return model(body, opset, "float[2,4,5,5] x", "float[2,6,11,11] y", **inits), _x(rng, 2, 4, 5, 5)


def gemm(trans_b: int) -> Case:
    def case(opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
        body = (
            f"c = Gemm <alpha = 0.5, beta = 2.0, transB = {trans_b}> (x, w, cb)\n"
            "y = BatchNormalization (c, s_g, s_b, s_m, s_v)"
        )
        w = rng.normal(size=(7, 5) if trans_b else (5, 7))
        inits = {"w": w, "cb": rng.normal(size=(1, 7)), **bn_stats(rng, 7, "s")}
        return model(body, opset, "float[3,5] x", "float[3,7] y", **inits), _x(rng, 3, 5)

    return case


def matmul_const(opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    body = "c = MatMul (x, w)\ny = BatchNormalization (c, s_g, s_b, s_m, s_v)"
    m = model(body, opset, "float[4,5] x", "float[4,7] y", w=rng.normal(size=(5, 7)), **bn_stats(rng, 7, "s"))
    return m, _x(rng, 4, 5)


def bn_then_conv(pad: int) -> Case:
    def case(opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
        body = (
            "b = BatchNormalization (x, s_g, s_b, s_m, s_v)\n"
            f"y = Conv <group = 2, pads = [{pad}, {pad}, {pad}, {pad}]> (b, w, wb)"
        )
        inits = {"w": rng.normal(size=(6, 2, 3, 3)), "wb": rng.normal(size=6), **bn_stats(rng, 4, "s")}
        out = 6 + 2 * pad - 2
        return model(body, opset, "float[2,4,6,6] x", f"float[2,6,{out},{out}] y", **inits), _x(rng, 2, 4, 6, 6)

    return case


def bn_then_gemm(opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    body = "b = BatchNormalization (x, s_g, s_b, s_m, s_v)\ny = Gemm <alpha = 1.5, beta = 0.5, transB = 1> (b, w, cb)"
    inits = {"w": rng.normal(size=(3, 5)), "cb": rng.normal(size=3), **bn_stats(rng, 5, "s")}
    return model(body, opset, "float[4,5] x", "float[4,3] y", **inits), _x(rng, 4, 5)


def fan_out(opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    body = "c = Conv (x, w)\nb = BatchNormalization (c, s_g, s_b, s_m, s_v)\nr = Relu (c)\ny = Add (b, r)"
    m = model(
        body, opset, "float[2,3,4,4] x", "float[2,5,4,4] y", w=rng.normal(size=(5, 3, 1, 1)), **bn_stats(rng, 5, "s")
    )
    return m, _x(rng, 2, 3, 4, 4)


CASES: dict[str, tuple[Case, list[str]]] = {
    "conv-grouped-no-bias": (conv_grouped_no_bias, [FOLD_PREV]),
    "convtranspose-grouped": (conv_transpose_grouped, [FOLD_PREV]),
    "gemm-transB0": (gemm(0), [FOLD_PREV]),
    "gemm-transB1": (gemm(1), [FOLD_PREV]),
    "matmul-const": (matmul_const, [FOLD_PREV]),
    "bn-conv-pads0": (bn_then_conv(0), [FOLD_NEXT]),
    "bn-conv-padded": (bn_then_conv(1), [PADDED]),
    "bn-gemm": (bn_then_gemm, [FOLD_NEXT]),
    "fan-out": (fan_out, [LOWER]),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", list(CASES))
def test_fold_removes_bn_and_matches_the_float64_oracle(name: str, opset: int) -> None:
    build, actions = CASES[name]
    original, x = build(opset, np.random.default_rng(opset))
    before = original.SerializeToString()
    folded, report = fold_onnx(original)
    assert original.SerializeToString() == before, "fold_onnx changed its input"
    assert count_ops(folded, BN) == 0
    assert [row.action for row in report.rows] == actions
    onnx.checker.check_model(folded, full_check=True)
    assert [o.name for o in folded.graph.output] == [o.name for o in original.graph.output]
    assert [i.name for i in folded.graph.input] == [i.name for i in original.graph.input]
    assert (folded.ir_version, list(folded.opset_import)) == (original.ir_version, list(original.opset_import))
    verdict = judge(original, folded, x)
    assert verdict.passed, f"{name} at opset {opset}: {verdict.line()}"
