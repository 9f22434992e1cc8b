"""Image folders for models brought from elsewhere: labelled (one folder per class) or a flat folder.

Each image becomes the tensor :mod:`contracts.images` defines (the one training and serving use): converted
to the model's channels (1: grey, 3: RGB), resized to its H x W as the recipe says (``--resize``/``--crop``,
``contracts.preprocessing``), scaled to [0, 1] and normalised with the user's ``--mean``/``--std``: float32
in the model's layout, ready for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contracts.images import ImageError, ImageSpec, preprocess
from contracts.preprocessing import Preprocessing
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


def image_spec(
    shape: tuple[int, ...], mean: list[float] | None, std: list[float] | None, prep: Preprocessing | None = None
) -> ImageSpec:
    """The image contract's spec for a model input ``shape`` (C,H,W, or H,W,C for an NHWC recipe)."""
    prep = prep or Preprocessing()
    channels = shape[-1 if prep.layout == "NHWC" else 0] if len(shape) == 3 else 0
    if channels not in (1, 3):
        order = "H,W,C" if prep.layout == "NHWC" else "C,H,W"
        raise ExportError(f"--images needs a model with an input shaped {order} and 1 or 3 channels; it takes {shape}")
    try:
        prep.check_crop(*((shape[0], shape[1]) if prep.layout == "NHWC" else (shape[1], shape[2])))
    except ValueError as exc:
        raise ExportError(f"--crop/--resize: {exc}") from exc
    try:
        return ImageSpec.from_shape(shape, mean, std, prep)
    except ValueError as exc:
        raise ExportError(
            f"--mean and --std need {channels} values each (one per input channel), std above 0; got {mean}, {std}"
        ) from exc


def _read(path: Path, spec: ImageSpec) -> np.ndarray:
    try:
        return preprocess(path, spec)
    except ImageError as exc:
        raise ExportError(str(exc)) from exc


def recipe_for(
    shape: tuple[int, ...], mean: list[float] | None, std: list[float] | None, prep: Preprocessing | None
) -> Preprocessing | None:
    """``prep``, checked against the model's input, when that input is an image (3-D, 1 or 3 channels where the
    recipe's layout puts them); None for any other input, which no image reaches."""
    if prep is None or len(shape) != 3 or shape[-1 if prep.layout == "NHWC" else 0] not in (1, 3):
        return None
    image_spec(shape, mean, std, prep)  # the crop is the input's size and fits the resize; mean and std fit
    return prep


def load_images(
    root: Path,
    shape: tuple[int, ...],
    mean: list[float] | None = None,
    std: list[float] | None = None,
    prep: Preprocessing | None = None,
) -> ImageSet:
    """Read ``root``: ``root/<class>/<image>`` (labelled, classes sorted) or ``root/<image>`` (unlabelled),
    each image prepared as the recipe ``prep`` says (default: today's squash)."""
    if not root.is_dir():
        raise ExportError(f"image folder {root} does not exist or is not a folder")
    spec = image_spec(shape, mean, std, prep)
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
