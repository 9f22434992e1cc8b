"""fold_onnx keeps the graph's contract: shared initializers untouched, names kept, old opsets, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import export.folding.onnx_rules as rules
from export.errors import ExportError
from export.folding.onnx_fold import fold_onnx
from tests.export.onnx_graphs import FOLD_NEXT, FOLD_PREV, LOWER, PADDED, bn_stats, count_ops, judge, model

BN = "BatchNormalization"


def _initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _weight_of(proto: onnx.ModelProto, output: str) -> str:
    return next(n.input[1] for n in proto.graph.node if output in n.output)


@pytest.mark.parametrize("opset", [9, 15])
def test_shared_weight_is_copied_and_the_other_conv_keeps_it(opset: int) -> None:
    rng = np.random.default_rng(1)
    body = "c1 = Conv (x, w)\nb1 = BatchNormalization (c1, s_g, s_b, s_m, s_v)\nc2 = Conv (x, w)\ny = Add (b1, c2)"
    original = model(
        body, opset, "float[2,3,4,4] x", "float[2,5,4,4] y", w=rng.normal(size=(5, 3, 1, 1)), **bn_stats(rng, 5, "s")
    )
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [FOLD_PREV]
    weights = _initializers(folded)
    assert _weight_of(folded, "c2") == "w"
    np.testing.assert_array_equal(weights["w"], _initializers(original)["w"])
    assert _weight_of(folded, "b1") != "w"
    assert judge(original, folded, rng.normal(size=(2, 3, 4, 4)).astype(np.float32)).passed


def test_two_convs_sharing_a_weight_each_with_its_own_bn_get_their_own_weights() -> None:
    rng = np.random.default_rng(2)
    body = (
        "c1 = Conv (x, w)\nb1 = BatchNormalization (c1, p_g, p_b, p_m, p_v)\n"
        "c2 = Conv (x, w)\nb2 = BatchNormalization (c2, q_g, q_b, q_m, q_v)\ny = Add (b1, b2)"
    )
    inits = {"w": rng.normal(size=(5, 3, 1, 1)), **bn_stats(rng, 5, "p"), **bn_stats(rng, 5, "q")}
    original = model(body, 12, "float[2,3,4,4] x", "float[2,5,4,4] y", **inits)
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [FOLD_PREV, FOLD_PREV]
    w1, w2 = _weight_of(folded, "b1"), _weight_of(folded, "b2")
    assert len({w1, w2, "w"}) == 3
    assert "w" not in _initializers(folded), "the old weight, now unused, is dropped"
    assert judge(original, folded, rng.normal(size=(2, 3, 4, 4)).astype(np.float32)).passed


@pytest.mark.parametrize("pads", [0, 1], ids=["folded", "lowered"])
def test_bn_output_that_is_a_graph_output_keeps_its_name(pads: int) -> None:
    rng = np.random.default_rng(3)
    # pads=1 puts a Relu between Conv and BN, so BN must be lowered; either way BN's output "y" is the graph's
    relu = "r = Relu (c)\ny = BatchNormalization (r, s_g, s_b, s_m, s_v)"
    body = "c = Conv (x, w)\n" + (relu if pads else "y = BatchNormalization (c, s_g, s_b, s_m, s_v)")
    original = model(
        body, 15, "float[2,3,4,4] x", "float[2,5,4,4] y", w=rng.normal(size=(5, 3, 1, 1)), **bn_stats(rng, 5, "s")
    )
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [LOWER if pads else FOLD_PREV]
    assert [o.name for o in folded.graph.output] == ["y"]
    assert any("y" in n.output for n in folded.graph.node)
    assert judge(original, folded, rng.normal(size=(2, 3, 4, 4)).astype(np.float32)).passed


def test_constants_behind_identity_nodes_fold_and_orphans_are_dropped() -> None:
    """torch's exporter deduplicates equal initializers and reads them through Identity nodes."""
    rng = np.random.default_rng(13)
    body = (
        "wi = Identity (w)\ngi = Identity (s_g)\nc = Conv (x, wi)\n"
        "z = BatchNormalization (c, gi, s_b, s_m, s_v)\nk = Identity (gi)"
    )
    original = model(
        body,
        12,
        "float[2,3,4,4] x",
        "float[2,5,4,4] z, float[5] k",
        w=rng.normal(size=(5, 3, 1, 1)),
        **bn_stats(rng, 5, "s"),
    )
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [FOLD_PREV]
    assert [n.output[0] for n in folded.graph.node if n.op_type == "Identity"] == ["gi", "k"], "gi is still read"
    assert "w" not in _initializers(folded)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    assert judge(original, folded, x).passed


def test_a_weight_behind_transpose_folds() -> None:
    """torch's exporter without constant folding writes Linear as MatMul(x, Transpose(W))."""
    rng = np.random.default_rng(18)
    body = "wt = Transpose <perm = [1, 0]> (w)\nc = MatMul (x, wt)\ny = BatchNormalization (c, s_g, s_b, s_m, s_v)"
    original = model(body, 15, "float[4,5] x", "float[4,7] y", w=rng.normal(size=(7, 5)), **bn_stats(rng, 7, "s"))
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [FOLD_PREV]
    assert [n.op_type for n in folded.graph.node] == ["Gemm"], "the Transpose, now unused, is dropped"
    assert judge(original, folded, rng.normal(size=(4, 5)).astype(np.float32)).passed


def test_opset7_spatial0_per_element_statistics_are_lowered() -> None:
    rng = np.random.default_rng(4)
    body = "y = BatchNormalization <spatial = 0> (x, s_g, s_b, s_m, s_v)"
    original = model(body, 7, "float[2,3,4,4] x", "float[2,3,4,4] y", **bn_stats(rng, 3, "s", (4, 4)))
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [LOWER]
    assert "spatial=0" in report.rows[0].reason
    assert count_ops(folded, BN) == 0
    assert judge(original, folded, rng.normal(size=(2, 3, 4, 4)).astype(np.float32)).passed


def test_opset7_spatial1_conv_folds() -> None:
    rng = np.random.default_rng(5)
    body = "c = Conv <pads = [1, 1, 1, 1]> (x, w, wb)\ny = BatchNormalization <spatial = 1> (c, s_g, s_b, s_m, s_v)"
    inits = {"w": rng.normal(size=(4, 3, 3, 3)), "wb": rng.normal(size=4), **bn_stats(rng, 4, "s")}
    original = model(body, 7, "float[2,3,5,5] x", "float[2,4,5,5] y", **inits)
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [FOLD_PREV]
    assert judge(original, folded, rng.normal(size=(2, 3, 5, 5)).astype(np.float32)).passed


def test_training_mode_is_refused_with_the_reason() -> None:
    rng = np.random.default_rng(6)
    body = "y, rm, rv = BatchNormalization <training_mode = 1> (x, s_g, s_b, s_m, s_v)"
    original = model(body, 15, "float[2,3,4,4] x", "float[2,3,4,4] y", **bn_stats(rng, 3, "s"))
    with pytest.raises(ExportError, match=r"'y'.*training_mode=1"):
        fold_onnx(original)


def test_opset9_extra_outputs_mean_training_mode_and_are_refused() -> None:
    rng = np.random.default_rng(7)
    body = "y, m, v, sm, sv = BatchNormalization (x, s_g, s_b, s_m, s_v)"
    original = model(body, 9, "float[2,3,4,4] x", "float[2,3,4,4] y", **bn_stats(rng, 3, "s"))
    with pytest.raises(ExportError, match=r"training mode.*\['m', 'v', 'sm', 'sv'\]"):
        fold_onnx(original)


def _opset15_extra_outputs(consumed: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(8)
    tail = "\nz = Add (y, rm)" if consumed else ""
    body = "y, rm, rv = BatchNormalization (x, s_g, s_b, s_m, s_v)" + tail
    out = "float[2,3] z" if consumed else "float[2,3] y"
    return model(body, 15, "float[2,3] x", out, **bn_stats(rng, 3, "s"))


def test_unused_extra_outputs_in_inference_mode_are_dropped() -> None:
    original = _opset15_extra_outputs(consumed=False)
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [LOWER]
    onnx.checker.check_model(folded, full_check=True)  # the original, with rm/rv declared, fails this
    body = "y = BatchNormalization (x, s_g, s_b, s_m, s_v)"  # the same BN without the extra outputs
    reference = model(body, 15, "float[2,3] x", "float[2,3] y", **_initializers(original))
    x = np.random.default_rng(9).normal(size=(2, 3)).astype(np.float32)
    assert judge(reference, folded, x).passed


def test_consumed_extra_outputs_are_refused() -> None:
    with pytest.raises(ExportError, match=r"extra outputs \['rm'\] are consumed"):
        fold_onnx(_opset15_extra_outputs(consumed=True))


def test_statistics_that_are_graph_inputs_are_refused() -> None:
    rng = np.random.default_rng(10)
    stats = bn_stats(rng, 3, "s")
    original = model(
        "y = BatchNormalization (x, s_g, s_b, s_m, v)", 15, "float[2,3] x, float[3] v", "float[2,3] y", **stats
    )
    with pytest.raises(ExportError, match=r"input var \(v\) is not a constant initializer"):
        fold_onnx(original)


def _deep(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv+BN, BN before a padded grouped Conv (scale folded, shift an Add), ConvTranspose+BN, BN before a 1x1 Conv."""
    body = """
        c1 = Conv <pads = [1, 1, 1, 1]> (x, w1)
        b1 = BatchNormalization (c1, p_g, p_b, p_m, p_v)
        r1 = Relu (b1)
        b2 = BatchNormalization (r1, q_g, q_b, q_m, q_v)
        c2 = Conv <pads = [1, 1, 1, 1], group = 2> (b2, w2)
        r2 = Relu (c2)
        t1 = ConvTranspose <group = 2, strides = [2, 2]> (r2, w3, w3b)
        b3 = BatchNormalization (t1, u_g, u_b, u_m, u_v)
        r3 = Relu (b3)
        b4 = BatchNormalization (r3, z_g, z_b, z_m, z_v)
        y = Conv (b4, w4)"""
    inits = {
        "w1": rng.normal(size=(8, 4, 3, 3)) / 6,
        "w2": rng.normal(size=(6, 4, 3, 3)) / 6,
        "w3": rng.normal(size=(6, 3, 3, 3)) / 5,
        "w3b": rng.normal(size=6),
        "w4": rng.normal(size=(5, 6, 1, 1)) / 2,
    }
    for prefix, c in (("p", 8), ("q", 8), ("u", 6), ("z", 6)):
        inits.update(bn_stats(rng, c, prefix))
    return model(body, 12, "float[2,4,8,8] x", "float[2,5,17,17] y", **inits)


def _break(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    import export.folding.onnx_bn as bn_module

    real_pre, real_scale_shift = rules.preceding_weight_bias, bn_module.scale_shift

    def layout_transposed(w, b, s, t, groups, transposed):  # type: ignore[no-untyped-def]
        return real_pre(w, b, s, t, groups, False)

    def one_scale_dropped(w, b, s, t, groups, transposed):  # type: ignore[no-untyped-def]
        s = s.copy()
        s[3] = 1.0
        return real_pre(w, b, s, t, groups, transposed)

    def eps_left_out(gamma, beta, mean, var, eps):  # type: ignore[no-untyped-def]
        return real_scale_shift(gamma, beta, mean, var, 0.0)

    if how == "shift-through-padded-conv":
        monkeypatch.setattr(rules, "reads_padding", lambda conv: False)
    elif how == "convtranspose-layout-transposed":
        monkeypatch.setattr(rules, "preceding_weight_bias", layout_transposed)
    elif how == "one-channel-scale-dropped":
        monkeypatch.setattr(rules, "preceding_weight_bias", one_scale_dropped)
    elif how == "eps-left-out":
        monkeypatch.setattr(bn_module, "scale_shift", eps_left_out)


WRONG_FOLDS = [
    "shift-through-padded-conv",
    "convtranspose-layout-transposed",
    "one-channel-scale-dropped",
    "eps-left-out",
]


@pytest.mark.parametrize("how", ["correct", *WRONG_FOLDS])
def test_wrong_folds_of_a_deep_graph_are_caught(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9 item 1's four wrong folds on the ONNX path: the oracle rule rejects each; the right fold passes."""
    rng = np.random.default_rng(12)
    original = _deep(rng)
    _break(monkeypatch, how)
    folded, report = fold_onnx(original)
    assert count_ops(folded, BN) == 0
    verdict = judge(original, folded, rng.normal(size=(2, 4, 8, 8)).astype(np.float32))
    if how == "correct":
        assert [r.action for r in report.rows] == [FOLD_PREV, PADDED, FOLD_PREV, FOLD_NEXT]
        assert verdict.passed, verdict.line()
    else:
        assert not verdict.passed, f"{how} went unnoticed: {verdict.line()}"


@pytest.mark.parametrize("how", ["correct", "one-channel-scale-dropped"])
def test_a_sample_fills_each_rows_difference(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(14)
    original = _deep(rng)
    _break(monkeypatch, how)
    _, report = fold_onnx(original, sample=rng.normal(size=(2, 4, 8, 8)).astype(np.float32))
    rel = [row.max_rel_diff for row in report.rows]
    if how == "correct":
        assert all(0 < r < 1e-5 for r in rel), rel
    else:  # the first row (Conv + BN, folded into the Conv) is the broken one
        assert rel[0] > 1e-3, rel


@pytest.mark.parametrize("bn_first", [False, True], ids=["gemm-bn", "bn-gemm"])
def test_gemm_without_c_gets_one(bn_first: bool) -> None:
    """Gemm's C is optional from opset 11: a fold either way must add it (the shift has to live somewhere)."""
    rng = np.random.default_rng(15)
    gemm = "Gemm <alpha = 0.25, transB = 1>"
    body = (
        f"b = BatchNormalization (x, s_g, s_b, s_m, s_v)\ny = {gemm} (b, w)"
        if bn_first
        else f"c = {gemm} (x, w)\ny = BatchNormalization (c, s_g, s_b, s_m, s_v)"
    )
    channels = 5 if bn_first else 4
    original = model(
        body, 13, "float[3,5] x", "float[3,4] y", w=rng.normal(size=(4, 5)), **bn_stats(rng, channels, "s")
    )
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [FOLD_NEXT if bn_first else FOLD_PREV]
    assert [len(n.input) for n in folded.graph.node] == [3]
    assert judge(original, folded, rng.normal(size=(3, 5)).astype(np.float32)).passed


def test_lowering_without_a_known_rank_is_refused() -> None:
    rng = np.random.default_rng(16)
    original = model(
        "y = BatchNormalization (x, s_g, s_b, s_m, s_v)", 15, "float x", "float y", **bn_stats(rng, 3, "s")
    )
    with pytest.raises(ExportError, match=r"'y': its input's rank is unknown"):
        fold_onnx(original)


def test_batchnorm_inside_a_subgraph_is_refused() -> None:
    rng = np.random.default_rng(17)
    stats = {k: numpy_helper.from_array(v.astype(np.float32), k) for k, v in bn_stats(rng, 3, "s").items()}
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("BatchNormalization", ["x", *stats], ["t"], name="inner_bn")],
        "branch",
        [],
        [onnx.helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2, 3])],
        list(stats.values()),
    )
    node = onnx.helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [
            onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3]),
        ],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    original = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 15)], ir_version=8)
    with pytest.raises(ExportError, match=r"'inner_bn' is inside a subgraph"):
        fold_onnx(original)


def test_opsets_before_7_are_refused() -> None:
    rng = np.random.default_rng(19)
    body = "y = BatchNormalization <is_test = 1> (x, s_g, s_b, s_m, s_v)"
    original = model(body, 6, "float[2,3] x", "float[2,3] y", **bn_stats(rng, 3, "s"))
    with pytest.raises(ExportError, match=r"'y' is at opset 6; bnfold reads opsets 7 to 15"):
        fold_onnx(original)


def test_float16_graphs_get_float16_weights() -> None:
    """The float64 result is cast once to the weight's own type, also when the weight sits behind an Identity."""
    rng = np.random.default_rng(20)
    body = "wi = Identity (w)\nc = Conv (x, wi)\ny = BatchNormalization (c, s_g, s_b, s_m, s_v)"
    inits = {"w": rng.normal(size=(5, 3, 1, 1)), **bn_stats(rng, 5, "s")}
    original = model(body, 15, "float16[2,3,4,4] x", "float16[2,5,4,4] y", np.float16, **inits)
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [FOLD_PREV]
    onnx.checker.check_model(folded, full_check=True)  # type inference: a float32 weight in a float16 Conv fails
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert judge(original, folded, rng.normal(size=(2, 3, 4, 4)).astype(np.float16)).passed
