"""Four ONNX graphs beyond "one float32 input, one (N, classes) output", each with a BatchNormalization to fold.

- ``two_inputs``: an image (float32 N,3,8,8) and a float32 (N, 4) side input -> logits (N, 5);
- ``logits_and_embedding``: an image -> logits (N, 5) and an embedding (N, 4);
- ``feature_map``: Conv -> BN, an image -> a feature map (N, 8, 10, 10) (no classes);
- ``uint8_nhwc``: uint8 NHWC pixels (N, 8, 8, 3), cast and scaled inside the graph -> logits (N, 3);
- ``mixed_types``: INT64 ids and a BOOL mask -> FP16, INT64 and BOOL outputs.
"""

from __future__ import annotations

import numpy as np
import onnx

from tests.export.onnx_graphs import bn_stats, model

OPSET = 17
BN = "BatchNormalization <epsilon = 0.001> (c, bn_g, bn_b, bn_m, bn_v)"


def _trunk(rng: np.random.Generator, channels: int = 4, in_channels: int = 3) -> dict[str, np.ndarray]:
    return {
        "w": rng.normal(size=(channels, in_channels, 3, 3)) * 0.3,
        "wb": rng.normal(size=channels),
        **bn_stats(rng, channels, "bn"),
    }


def two_inputs(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = f"""
c = Conv <pads = [1, 1, 1, 1]> (image, w, wb)
n = {BN}
r = Relu (n)
p = GlobalAveragePool (r)
f = Flatten (p)
j = Concat <axis = 1> (f, extra)
logits = Gemm <transB = 1> (j, fc, fcb)"""
    weights = {**_trunk(rng), "fc": rng.normal(size=(5, 8)), "fcb": rng.normal(size=5)}
    return model(body, OPSET, "float[N, 3, 8, 8] image, float[N, 4] extra", "float[N, 5] logits", **weights)


def logits_and_embedding(seed: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = f"""
c = Conv <pads = [1, 1, 1, 1]> (x, w, wb)
n = {BN}
r = Relu (n)
p = GlobalAveragePool (r)
embedding = Flatten (p)
logits = Gemm <transB = 1> (embedding, fc, fcb)"""
    weights = {**_trunk(rng), "fc": rng.normal(size=(5, 4)), "fcb": rng.normal(size=5)}
    return model(body, OPSET, "float[N, 3, 8, 8] x", "float[N, 5] logits, float[N, 4] embedding", **weights)


def feature_map(seed: int = 2) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = f"""
c = Conv <pads = [1, 1, 1, 1]> (x, w, wb)
y = {BN}"""
    return model(body, OPSET, "float[N, 3, 10, 10] x", "float[N, 8, 10, 10] y", **_trunk(rng, 8))


def uint8_nhwc(seed: int = 3) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = f"""
xf = Cast <to = 1> (pixels)
xs = Mul (xf, scale)
t = Transpose <perm = [0, 3, 1, 2]> (xs)
c = Conv <pads = [1, 1, 1, 1]> (t, w, wb)
n = {BN}
r = Relu (n)
p = GlobalAveragePool (r)
f = Flatten (p)
logits = Gemm <transB = 1> (f, fc, fcb)"""
    weights = {**_trunk(rng), "fc": rng.normal(size=(3, 4)), "fcb": rng.normal(size=3), "scale": np.array(1 / 255)}
    return model(body, OPSET, "uint8[N, 8, 8, 3] pixels", "float[N, 3] logits", **weights)


def mixed_types(seed: int = 4) -> onnx.ModelProto:
    """INT64 ids and a BOOL mask in; FP16, INT64 and BOOL out (a BN on the masked ids in between)."""
    rng = np.random.default_rng(seed)
    body = """
f = Cast <to = 1> (ids)
m = Cast <to = 1> (mask)
c = Mul (f, m)
n = BatchNormalization <epsilon = 0.001> (c, bn_g, bn_b, bn_m, bn_v)
half = Cast <to = 10> (n)
twice = Add (ids, ids)
unmasked = Not (mask)"""
    outputs = "float16[N, 4] half, int64[N, 4] twice, bool[N, 4] unmasked"
    return model(body, OPSET, "int64[N, 4] ids, bool[N, 4] mask", outputs, **bn_stats(rng, 4, "bn"))


MODELS = {
    "two_inputs": two_inputs,
    "logits_and_embedding": logits_and_embedding,
    "feature_map": feature_map,
    "uint8_nhwc": uint8_nhwc,
    "mixed_types": mixed_types,
}
