"""Procedurally generated coloured shapes at any size: a dataset that needs nothing but numpy.

Each class is a shape (disc, square, triangle, cross, ring, bar); colour, size and position vary at random
over a noisy background. Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


def _mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        w = max(r * 0.3, 0.75)
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    return (np.abs(dy) <= max(r * 0.25, 0.75)) & (np.abs(dx) <= r)  # bar


def make_shapes(
    num_samples: int, image_size: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``num_samples`` RGB images (N, 3, S, S) in [0, 1] with balanced labels over ``num_classes`` shapes."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"synthetic num_classes must be 2..{len(SHAPES)}, got {num_classes}")
    rng = np.random.default_rng(seed)
    y = np.arange(num_samples) % num_classes
    rng.shuffle(y)
    x = rng.uniform(0.0, 0.25, size=(num_samples, 3, image_size, image_size)).astype(np.float32)
    for i, label in enumerate(y):
        r = rng.uniform(0.2, 0.35) * image_size
        cx, cy = rng.uniform(r, image_size - r, size=2)
        colour = rng.uniform(0.4, 1.0, size=3).astype(np.float32)
        mask = _mask(SHAPES[label], image_size, cx, cy, r)
        x[i][:, mask] = colour[:, None]
    return x, y.astype(np.int64), list(SHAPES[:num_classes])
