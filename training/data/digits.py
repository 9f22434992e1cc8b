"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 grey images of 0-9, no download needed."""

from __future__ import annotations

import numpy as np

from training.data.base import resize


def load_digits_arrays(image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images as float (N, 1, S, S) in [0, 1], integer labels, and the label names "0".."9"."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]  # (1797, 1, 8, 8)
    return resize(x, image_size), bunch.target.astype(np.int64), [str(int(n)) for n in bunch.target_names]
