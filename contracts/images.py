"""Image preprocessing, the one definition training, export and serving share: the same PNG becomes the same
tensor, bit for bit, in all three.

    decode (Pillow; header checked against a pixel budget before any pixel is decoded)
    -> grey ("L") or RGB, as the spec's channels say
    -> bilinear resize to the spec's H x W (Pillow's, with its antialiasing filter support)
    -> float32 / 255                                   values in [0, 1], shape (C, H, W)
    -> (x - mean[c]) / std[c] per channel, in float32  only when the spec has a mean or a std

Training fits mean and std on its training split after this step without them (``ImageSpec`` with none) and
applies :func:`normalise` itself; export and serving pass the stored values in the spec.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


class ImageError(ValueError):
    """An image that cannot be read (the message names it and says why)."""


class ImageTooLarge(ImageError):
    """An image over the pixel budget, refused from its header before decoding."""


@dataclass(frozen=True)
class ImageSpec:
    """What a model takes: ``channels`` (1 grey, 3 RGB) x ``height`` x ``width``, and an optional per-channel
    normalisation (``mean`` defaults to 0 and ``std`` to 1 when only the other is given)."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"an image input has 1 or 3 channels, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"an image input has a positive height and width, got {self.height}x{self.width}")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{what} needs {self.channels} values (one per channel), got {list(values)}")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ValueError(f"std must be above 0 in every channel, got {list(self.std)}")

    @classmethod
    def from_shape(
        cls, shape: Sequence[int], mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> ImageSpec:
        """The spec of a model input shaped (C, H, W) (no batch axis)."""
        if len(shape) != 3:
            raise ValueError(f"an image input is shaped C,H,W; got {list(shape)}")
        channels, height, width = (int(d) for d in shape)
        return cls(channels, height, width, _floats(mean), _floats(std))

    @property
    def mode(self) -> str:
        """The Pillow mode images are converted to."""
        return "L" if self.channels == 1 else "RGB"


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def normalise(x: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """``(x - mean[c]) / std[c]`` over the channel axis of ``x`` (..., C, H, W), in float32; the identity
    (as float32) when neither is given. Training applies this to its whole split, serving to one image."""
    x = np.asarray(x, dtype=np.float32)
    if mean is None and std is None:
        return x
    channels = x.shape[-3]
    m = np.asarray(mean if mean is not None else [0.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std if std is not None else [1.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def pixels(img: PILImage.Image, spec: ImageSpec) -> np.ndarray:
    """An opened image -> float32 (C, H, W) in [0, 1]: converted to the spec's mode, resized bilinearly."""
    from PIL import Image

    converted = img.convert(spec.mode).resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    arr = np.asarray(converted, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr[None] if spec.channels == 1 else arr.transpose(2, 0, 1))


def _kind(formats: Sequence[str] | None) -> str:
    return " or ".join(formats) + " image" if formats else "image"


def _open(source: bytes | Path, formats: Sequence[str] | None) -> PILImage.Image:
    from PIL import Image

    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    return Image.open(fp, formats=list(formats) if formats else None)


def preprocess(
    image: bytes | Path | PILImage.Image,
    spec: ImageSpec,
    *,
    name: str | None = None,
    formats: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """One image (encoded bytes, a file, or an opened Pillow image) -> float32 (C, H, W) as ``spec`` says.

    ``formats`` limits the decoders tried (e.g. ``("PNG", "JPEG")``); ``max_pixels`` refuses a larger image
    from its header (:class:`ImageTooLarge`). Anything unreadable raises :class:`ImageError` naming ``name``
    (default: the file's path, or "image").
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return normalise(pixels(image, spec), spec.mean, spec.std)
    label = name or (str(image) if isinstance(image, Path) else "image")
    try:
        with _open(image, formats) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:  # header only: nothing decoded
                size = f"{img.width}x{img.height} pixels"
                raise ImageTooLarge(f"{label}: {size} exceeds the limit of {max_pixels} pixels")
            x = pixels(img, spec)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{label}: too many pixels (Pillow's decompression-bomb limit)") from None
    except Image.UnidentifiedImageError:
        kind = f"a {_kind(formats)}" if formats else "an image in a format Pillow reads"
        raise ImageError(f"{label} is not {kind}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's errors for broken image data
        if isinstance(exc, ImageError):
            raise
        detail = _OBJECT_REPR.sub("", str(exc)) or type(exc).__name__
        raise ImageError(f"{label} is not a readable {_kind(formats)} ({detail})") from None
    return normalise(x, spec.mean, spec.std)
