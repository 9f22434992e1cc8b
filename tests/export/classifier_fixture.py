"""A small BN classifier on 1x6x6 images and labelled PNGs for it, built without torch or pytest (used by
tests/export/test_without_torch.py and by CI's fresh bnfold[onnx,serve] environment, .ci/onnx_only.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from tests.export.onnx_graphs import bn_stats, model


def _classifier() -> onnx.ModelProto:
    """Conv -> BN -> ReLU -> pool -> Gemm on 1x6x6 images: class 0 for bright images, 1 for dark, by a wide margin."""
    rng = np.random.default_rng(0)
    body = """
        c = Conv <pads = [1, 1, 1, 1]> (image, w)
        n = BatchNormalization (c, bn_g, bn_b, bn_m, bn_v)
        r = Relu (n)
        p = GlobalAveragePool (r)
        f = Flatten (p)
        scores = Gemm <transB = 1> (f, fc_w, fc_b)
    """
    w = np.abs(rng.normal(0.1, 0.02, size=(4, 1, 3, 3)))
    stats = {**bn_stats(rng, 4, "bn"), "bn_m": np.zeros(4), "bn_v": np.ones(4), "bn_b": np.zeros(4)}
    fc_w = np.array([[10.0] * 4, [-10.0] * 4])
    fc_b = np.array([-4.0, 4.0])
    return model(body, 15, "float[N, 1, 6, 6] image", "float[N, 2] scores", w=w, fc_w=fc_w, fc_b=fc_b, **stats)


def _images(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for label, level in (("bright", 230), ("dark", 20)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(level + rng.integers(-15, 16, size=(6, 6)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / label / f"{i}.png")
    return root
