"""Image folders for models brought from elsewhere: labelled (one folder per class) or a flat folder.

Images are read with Pillow, converted to the model's channels (1: grey, 3: RGB), resized to its H x W,
scaled to [0, 1] and normalised with the user's ``--mean``/``--std``: float32 NCHW, ready for the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _read(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    if channels not in (1, 3):
        raise ExportError(f"--images needs a model with 1 or 3 input channels; its input shape is {shape}")
    try:
        with Image.open(path) as img:
            sized = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(sized, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ExportError(f"cannot read image {path}: {exc}") from exc
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)  # (C, H, W)


def normalise(x: np.ndarray, mean: list[float] | None, std: list[float] | None) -> np.ndarray:
    """``(x - mean) / std`` per channel; the identity when neither is given."""
    if mean is None and std is None:
        return x
    channels = x.shape[1]
    m = np.asarray(mean if mean is not None else [0.0] * channels, dtype=np.float32)
    s = np.asarray(std if std is not None else [1.0] * channels, dtype=np.float32)
    if len(m) != channels or len(s) != channels or not np.all(s > 0):
        raise ExportError(
            f"--mean and --std need {channels} values each (one per input channel), std above 0; got {mean}, {std}"
        )
    return ((x - m.reshape(1, -1, 1, 1)) / s.reshape(1, -1, 1, 1)).astype(np.float32)


def load_images(
    root: Path, shape: tuple[int, ...], mean: list[float] | None = None, std: list[float] | None = None
) -> ImageSet:
    """Read ``root``: ``root/<class>/<image>`` (labelled, classes sorted) or ``root/<image>`` (unlabelled)."""
    if not root.is_dir():
        raise ExportError(f"image folder {root} does not exist or is not a folder")
    if len(shape) != 3:
        raise ExportError(f"--images needs an image input shape C,H,W; the model takes {shape}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _files(p))
    if classes:
        paths = [(f, i) for i, c in enumerate(classes) for f in _files(root / c)]
    else:
        paths = [(f, -1) for f in _files(root)]
    if not paths:
        raise ExportError(
            f"image folder {root} holds no images ({', '.join(SUFFIXES)}), neither directly nor in class folders"
        )
    x = normalise(np.stack([_read(f, shape) for f, _ in paths]), mean, std)
    y = np.array([i for _, i in paths], dtype=np.int64) if classes else None
    logger.info("read %d images from %s%s", len(x), root, f" in {len(classes)} classes" if classes else "")
    return ImageSet(root, x, y, classes or None)
