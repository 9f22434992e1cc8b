"""Images in one folder per class (PNG or JPEG), loaded into memory at a fixed square size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contracts.images import ImageError, ImageSpec, preprocess
from training.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as float32 (C, size, size) in [0, 1] (:mod:`contracts.images`); a corrupt file raises DataError
    naming it."""
    try:
        return preprocess(path, ImageSpec(channels, size, size))
    except ImageError as exc:
        raise DataError(str(exc)) from exc


def _image_mode(path: Path) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return str(img.mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def load_imagefolder_arrays(
    root: Path | None, image_size: int, channels: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load ``root/<class>/*.{png,jpg,jpeg}``; class names sorted; grey if every image is grey."""
    if root is None:
        raise DataError("dataset 'imagefolder' needs --data-dir pointing at a folder with one folder per class")
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c: sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    classes = [c for c in classes if files[c]]
    if len(classes) < 2:
        raise DataError(
            f"image folder {root} has {len(classes)} class folder(s) with images; need at least 2 "
            "(layout: <data-dir>/<class name>/<image>.png)"
        )
    paths = [(f, i) for i, c in enumerate(classes) for f in files[c]]
    if channels is None:
        channels = 1 if all(_image_mode(f) in GREY_MODES for f, _ in paths) else 3
    x = np.stack([load_image(f, image_size, channels) for f, _ in paths])
    y = np.array([i for _, i in paths], dtype=np.int64)
    return x, y, classes
