"""``load_dataset``: the one entry point that turns a dataset name and options into a :class:`Dataset`."""

from __future__ import annotations

from pathlib import Path

from training.data.base import Dataset, finish_dataset
from training.errors import DataError

DATASET_NAMES = ["digits", "imagefolder", "mnist", "synthetic"]
DEFAULT_IMAGE_SIZE = {"digits": 8, "imagefolder": 32, "mnist": 28, "synthetic": 32}


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    image_size: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    synthetic_samples: int = 2000,
    synthetic_classes: int = 4,
) -> Dataset:
    """Load dataset ``name``, split it deterministically by ``seed`` and normalise it per channel."""
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASET_NAMES)}")
    size = image_size or DEFAULT_IMAGE_SIZE[name]
    if size < 1:
        raise DataError(f"image_size must be positive, got {size}")
    if name == "digits":
        from training.data.digits import load_digits_arrays

        x, y, labels = load_digits_arrays(size)
        return finish_dataset(name, x, y, labels, val_fraction, seed)
    if name == "imagefolder":
        from training.data.imagefolder import load_imagefolder_arrays

        x, y, labels = load_imagefolder_arrays(data_dir, size)
        return finish_dataset(name, x, y, labels, val_fraction, seed)
    if name == "mnist":
        from training.data.mnist import load_mnist_arrays

        x, y, labels, val = load_mnist_arrays(data_dir, size)
        return finish_dataset(name, x, y, labels, val_fraction, seed, val=val)
    from training.data.synthetic import make_shapes

    x, y, labels = make_shapes(synthetic_samples, size, synthetic_classes, seed)
    return finish_dataset(name, x, y, labels, val_fraction, seed)
