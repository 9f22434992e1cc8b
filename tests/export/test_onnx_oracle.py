"""The float64 oracle: really float64, the right engine, and kernels that agree with ONNX Runtime's float32."""

from __future__ import annotations

import re

import numpy as np
import pytest

from export.verification.onnx_oracle import onnx_float64_oracle
from tests.export.onnx_graphs import bn_stats, model, run


def test_constants_casts_and_inputs_become_float64() -> None:
    body = "one = Constant <value_float = 1e-10> ()\nd = Cast <to = 1> (x)\ny = Add (d, one)"
    m = model(body, 15, "float[3] x", "float[3] y")
    oracle = onnx_float64_oracle(m)
    assert oracle.engine == "onnxruntime"
    y = oracle(np.ones(3, dtype=np.float32))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y - 1.0, 1e-10, rtol=1e-6)  # float32 would give exactly 0
    assert (run(m, np.ones(3, dtype=np.float32)) == 1.0).all()


def _bn_reference(x: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    eps = float(np.float32(1e-5))  # the attribute is a float32
    g, b, m, v = (stats[f"s_{k}"] for k in "gbmv")
    view = (-1, 1, 1) if g.ndim == 1 else g.shape
    g, b, m, v = (a.astype(np.float32).astype(np.float64).reshape(view) for a in (g, b, m, v))
    return (x - m) / np.sqrt(v + eps) * g + b


@pytest.mark.parametrize("opset", [7, 9, 12, 15])
def test_batchnorm_uses_population_statistics_on_the_reference_engine(opset: int) -> None:
    """onnx.reference's own BN (opsets 7-13) blends in batch statistics; the oracle's must not."""
    rng = np.random.default_rng(opset)
    stats = bn_stats(rng, 3, "s")
    body = "c = Conv (x, w)\ny = BatchNormalization (c, s_g, s_b, s_m, s_v)"
    w = np.eye(3).reshape(3, 3, 1, 1)  # the identity convolution: y = BN(x)
    oracle = onnx_float64_oracle(model(body, opset, "float[2,3,4,4] x", "float[2,3,4,4] y", w=w, **stats))
    assert oracle.engine == "onnx.reference"  # ONNX Runtime has no double Conv
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(oracle(x), _bn_reference(x.astype(np.float64), stats), rtol=1e-12, atol=1e-12)


def test_batchnorm_spatial0_per_element_on_the_reference_engine() -> None:
    rng = np.random.default_rng(0)
    stats = bn_stats(rng, 3, "s", (4, 4))
    body = "c = Conv (x, w)\ny = BatchNormalization <spatial = 0> (c, s_g, s_b, s_m, s_v)"
    oracle = onnx_float64_oracle(
        model(body, 7, "float[2,3,4,4] x", "float[2,3,4,4] y", w=np.eye(3).reshape(3, 3, 1, 1), **stats)
    )
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(oracle(x), _bn_reference(x.astype(np.float64), stats), rtol=1e-12, atol=1e-12)


CONVS = {
    "asym-pads-stride-dilation": (
        "Conv <pads = [0, 1, 2, 1], strides = [2, 1], dilations = [1, 2]>",
        (6, 4, 3, 3),
        (2, 4, 9, 8),
    ),
    "same-upper-grouped": ('Conv <auto_pad = "SAME_UPPER", strides = [2, 2], group = 2>', (6, 2, 3, 2), (2, 4, 7, 6)),
    "same-lower": ('Conv <auto_pad = "SAME_LOWER", strides = [2, 2]>', (5, 4, 2, 3), (1, 4, 7, 6)),
    "valid-1d": ('Conv <auto_pad = "VALID">', (5, 4, 3), (2, 4, 9)),
    "depthwise-3d": ("Conv <group = 4, pads = [1, 1, 1, 1, 1, 1]>", (4, 1, 3, 3, 3), (1, 4, 4, 5, 3)),
    "convT-grouped-uneven": (
        "ConvTranspose <group = 2, strides = [2, 2], pads = [1, 0, 0, 1]>",
        (4, 3, 3, 3),
        (2, 4, 4, 5),
    ),
    "convT-output-padding": (
        "ConvTranspose <strides = [2, 3], output_padding = [1, 2], dilations = [2, 1]>",
        (3, 2, 3, 2),
        (1, 3, 4, 4),
    ),
    "convT-output-shape": ("ConvTranspose <strides = [2, 2], output_shape = [9, 10]>", (3, 4, 3, 3), (1, 3, 4, 5)),
    "convT-same-upper": ('ConvTranspose <auto_pad = "SAME_UPPER", strides = [2, 2]>', (3, 4, 4, 3), (1, 3, 3, 4)),
    "convT-1d-grouped": ("ConvTranspose <group = 3, strides = [3]>", (6, 2, 4), (2, 6, 5)),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_kernels_agree_with_onnxruntime(name: str) -> None:
    """The oracle's Conv/ConvTranspose follow ONNX Runtime's float32 kernels to float32 accuracy."""
    op, w_shape, x_shape = CONVS[name]
    rng = np.random.default_rng(len(name))
    group = int(re.search(r"group = (\d+)", op).group(1)) if "group" in op else 1  # type: ignore[union-attr]
    out_channels = w_shape[1] * group if op.startswith("ConvTranspose") else w_shape[0]
    m = model(
        f"y = {op} (x, w, b)",
        15,
        f"float{list(x_shape)} x",
        "float y",
        w=rng.normal(size=w_shape),
        b=rng.normal(size=out_channels),
    )
    x = rng.normal(size=x_shape).astype(np.float32)
    expected = run(m, x)
    got = onnx_float64_oracle(m)(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))


POOLS = {
    "maxpool-pads-stride": "MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]>",
    "maxpool-ceil-dilated": "MaxPool <kernel_shape = [2, 3], ceil_mode = 1, strides = [2, 2], dilations = [2, 1]>",
    "maxpool-asym-pads": "MaxPool <kernel_shape = [3, 3], pads = [0, 1, 2, 1]>",  # the reference's own loop
    "maxpool-same-upper": 'MaxPool <kernel_shape = [2, 2], auto_pad = "SAME_UPPER", strides = [2, 2]>',
    "avgpool-pads-counted": "AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1>",
    "avgpool-pads-not-counted": "AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 1]>",
    "avgpool-asym-pads": "AveragePool <kernel_shape = [3, 2], pads = [0, 1, 2, 1]>",
    "avgpool-ceil": "AveragePool <kernel_shape = [2, 2], strides = [2, 2], ceil_mode = 1>",  # the reference's own
    "avgpool-same-upper": 'AveragePool <kernel_shape = [3, 3], auto_pad = "SAME_UPPER", strides = [2, 2]>',
}


@pytest.mark.parametrize("name", list(POOLS))
def test_pooling_agrees_with_onnxruntime(name: str) -> None:
    rng = np.random.default_rng(len(name))
    m = model(
        f"c = Conv (x, w)\ny = {POOLS[name]} (c)", 15, "float[2,3,9,8] x", "float y", w=rng.normal(size=(3, 3, 1, 1))
    )
    x = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)
    expected = run(m, x)
    got = onnx_float64_oracle(m)(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_run_time_failure_of_onnxruntime_falls_back_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    m = model(
        "y = Gemm <transB = 1> (x, w, b)",
        15,
        "float[2,4] x",
        "float[2,3] y",
        w=rng.normal(size=(3, 4)),
        b=rng.normal(size=3),
    )
    oracle = onnx_float64_oracle(m)
    x = rng.normal(size=(2, 4)).astype(np.float32)
    expected = oracle(x)
    assert oracle.engine == "onnxruntime"

    def fail(*args: object) -> None:
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(oracle._session, "run", fail)
    np.testing.assert_allclose(oracle(x), expected, rtol=1e-14)
    assert oracle.engine == "onnx.reference"
