"""Image folders for models brought from elsewhere: labelled (one folder per class) or a flat folder.

Each image becomes the tensor :mod:`contracts.images` defines (the one training and serving use): converted
to the model's channels (1: grey, 3: RGB), resized to its H x W, scaled to [0, 1] and normalised with the
user's ``--mean``/``--std``: float32 NCHW, ready for the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contracts.images import ImageError, ImageSpec, preprocess
from export.errors import ExportError

logger = logging.getLogger(__name__)

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ImageSet:
    """Normalised images; ``y`` and ``classes`` only for a labelled (class-per-folder) tree."""

    root: Path
    x: np.ndarray
    y: np.ndarray | None
    classes: list[str] | None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def _spec(shape: tuple[int, ...], mean: list[float] | None, std: list[float] | None) -> ImageSpec:
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ExportError(f"--images needs a model with an input shaped C,H,W and 1 or 3 channels; it takes {shape}")
    try:
        return ImageSpec.from_shape(shape, mean, std)
    except ValueError as exc:
        raise ExportError(
            f"--mean and --std need {shape[0]} values each (one per input channel), std above 0; got {mean}, {std}"
        ) from exc


def _read(path: Path, spec: ImageSpec) -> np.ndarray:
    try:
        return preprocess(path, spec)
    except ImageError as exc:
        raise ExportError(str(exc)) from exc


def load_images(
    root: Path, shape: tuple[int, ...], mean: list[float] | None = None, std: list[float] | None = None
) -> ImageSet:
    """Read ``root``: ``root/<class>/<image>`` (labelled, classes sorted) or ``root/<image>`` (unlabelled)."""
    if not root.is_dir():
        raise ExportError(f"image folder {root} does not exist or is not a folder")
    spec = _spec(shape, mean, std)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _files(p))
    if classes:
        paths = [(f, i) for i, c in enumerate(classes) for f in _files(root / c)]
    else:
        paths = [(f, -1) for f in _files(root)]
    if not paths:
        raise ExportError(
            f"image folder {root} holds no images ({', '.join(SUFFIXES)}), neither directly nor in class folders"
        )
    x = np.stack([_read(f, spec) for f, _ in paths])
    y = np.array([i for _, i in paths], dtype=np.int64) if classes else None
    logger.info("read %d images from %s%s", len(x), root, f" in {len(classes)} classes" if classes else "")
    return ImageSet(root, x, y, classes or None)
