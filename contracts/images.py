"""Image preprocessing, the one definition training, export and serving share: the same PNG becomes the same
tensor, bit for bit, in all three.

    decode (Pillow; header checked against a pixel budget before any pixel is decoded)
    -> EXIF orientation applied, when the recipe (``spec.prep``, :mod:`contracts.preprocessing`) says so
    -> grey ("L") or RGB, as the spec's channels say
    -> resize to the spec's H x W as the recipe says (default: bilinear squash, Pillow's antialiasing filter)
    -> float32 / 255                                   values in [0, 1], shape (C, H, W) (or (H, W, C), BGR)
    -> (x - mean[c]) / std[c] per channel, in float32  only when the spec has a mean or a std

Training fits mean and std on its training split after this step without them (``ImageSpec`` with none) and
applies :func:`normalise` itself; export and serving pass the stored values in the spec.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contracts.preprocessing import Preprocessing, oriented, resized

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
    prep: Preprocessing = field(default_factory=Preprocessing)  # resize, interpolation, EXIF, channels, layout

    def __post_init__(self) -> None:
        self.prep.check_crop(self.height, self.width)
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
        cls,
        shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        prep: Preprocessing | None = None,
    ) -> ImageSpec:
        """The spec of a model input shaped (C, H, W), or (H, W, C) for an NHWC recipe (no batch axis)."""
        prep = prep or Preprocessing()
        order = "H,W,C" if prep.layout == "NHWC" else "C,H,W"
        if len(shape) != 3:
            raise ValueError(f"an image input is shaped {order}; got {list(shape)}")
        dims = [int(d) for d in shape]
        channels, height, width = (dims[2], dims[0], dims[1]) if prep.layout == "NHWC" else dims
        return cls(channels, height, width, _floats(mean), _floats(std), prep)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's array shape in the recipe's layout."""
        return (self.height, self.width, self.channels) if self.prep.layout == "NHWC" else self.shape_chw

    @property
    def shape_chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def mode(self) -> str:
        """The Pillow mode images are converted to."""
        return "L" if self.channels == 1 else "RGB"


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def normalise(
    x: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None, layout: str = "NCHW"
) -> np.ndarray:
    """``(x - mean[c]) / std[c]`` over the channel axis of ``x`` (..., C, H, W), in float32; the identity
    (as float32) when neither is given. Training applies this to its whole split, serving to one image."""
    x = np.asarray(x, dtype=np.float32)
    if mean is None and std is None:
        return x
    channels = x.shape[-1] if layout == "NHWC" else x.shape[-3]
    axes = (-1,) if layout == "NHWC" else (-1, 1, 1)
    m = np.asarray(mean if mean is not None else [0.0] * channels, dtype=np.float32).reshape(axes)
    s = np.asarray(std if std is not None else [1.0] * channels, dtype=np.float32).reshape(axes)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def pixels(img: PILImage.Image, spec: ImageSpec) -> np.ndarray:
    """An opened image -> float32 in [0, 1], (C, H, W) or (H, W, C) as the recipe (``spec.prep``) says:
    EXIF-oriented, converted to the spec's mode, resized (squash, or shorter side and centre crop), channels
    in RGB or BGR order."""
    prep = spec.prep
    converted = resized(oriented(img, prep).convert(spec.mode), prep, spec.height, spec.width)
    arr = np.asarray(converted, dtype=np.float32) / 255.0
    hwc = arr[..., None] if spec.channels == 1 else arr
    if prep.channel_order == "BGR":
        hwc = hwc[..., ::-1]
    return np.ascontiguousarray(hwc if prep.layout == "NHWC" else hwc.transpose(2, 0, 1))


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
        return normalise(pixels(image, spec), spec.mean, spec.std, spec.prep.layout)
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
    return normalise(x, spec.mean, spec.std, spec.prep.layout)
