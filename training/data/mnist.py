"""MNIST from user-supplied IDX files (optionally gzipped), as the paper used in section 4.1."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from training.data.base import resize
from training.errors import DataError

IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1-D, images: 3-D


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (magic 2049 labels or 2051 images)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if magic not in IDX_MAGIC:
        raise DataError(f"{path} is not an MNIST IDX file (magic {magic}, expected 2049 or 2051)")
    ndim = IDX_MAGIC[magic]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{path} is truncated: header says {dims} ({expected} bytes), has {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def load_mnist_arrays(
    root: Path | None, image_size: int
) -> tuple[np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray] | None]:
    """Training images/labels, label names, and the t10k split as validation when those files exist."""
    if root is None or not root.is_dir():
        raise DataError(
            f"dataset 'mnist' needs --data-dir with train-images-idx3-ubyte[.gz] and "
            f"train-labels-idx1-ubyte[.gz]; {root} is not a directory"
        )
    images, labels = _find(root, "train-images-idx3-ubyte"), _find(root, "train-labels-idx1-ubyte")
    if images is None or labels is None:
        raise DataError(f"{root} lacks train-images-idx3-ubyte[.gz] or train-labels-idx1-ubyte[.gz]")

    def pair(img_path: Path, lbl_path: Path) -> tuple[np.ndarray, np.ndarray]:
        x, y = read_idx(img_path), read_idx(lbl_path)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{img_path} and {lbl_path} do not match: {x.shape} images, {y.shape} labels")
        return resize((x.astype(np.float32) / 255.0)[:, None], image_size), y.astype(np.int64)

    x, y = pair(images, labels)
    t_img, t_lbl = _find(root, "t10k-images-idx3-ubyte"), _find(root, "t10k-labels-idx1-ubyte")
    val = pair(t_img, t_lbl) if t_img is not None and t_lbl is not None else None
    return x, y, [str(i) for i in range(10)], val
