"""How a model's images were prepared in training: the recipe recorded at export and replayed by every reader.

    EXIF orientation applied (``exif``; a phone photo stands the way it was taken)
    -> grey or RGB
    -> resize: "squash" (straight to H x W, aspect ratio lost: bnfold-train's own models), or
       "shorter-side-crop" (shorter side to ``resize``, the longer one ``int(resize * long / short)``, then the
       centre H x W: torchvision's ``Resize(resize), CenterCrop((H, W))`` on a PIL image)
    -> with ``interpolation`` (Pillow's filters, antialiased as Pillow always is when it shrinks)
    -> channel order RGB or BGR, then layout NCHW (C, H, W) or NHWC (H, W, C) per image

``Preprocessing()`` is today's behaviour for checkpoints from ``bnfold-train``: squash, bilinear, no EXIF,
RGB, NCHW, PNG and JPEG. A model's metadata carries ``to_dict()`` under ``bnfold.input.preprocessing``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image as PILImage

RESIZE_MODES = ("squash", "shorter-side-crop")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
FORMATS = ("PNG", "JPEG", "WEBP")


def _one_of(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Preprocessing:
    """The recipe; every field validated on construction (ValueError naming the field and what was expected)."""

    resize_mode: str = "squash"
    resize: int | None = None  # the shorter side's length, for "shorter-side-crop"
    crop: int | None = None  # the centre crop's side, when the user named it: must be the model's H and W
    interpolation: str = "bilinear"
    exif: bool = False
    channel_order: str = "RGB"
    layout: str = "NCHW"
    formats: tuple[str, ...] = ("PNG", "JPEG")

    def __post_init__(self) -> None:
        _one_of("resize mode", self.resize_mode, RESIZE_MODES)
        _one_of("interpolation", self.interpolation, INTERPOLATIONS)
        _one_of("channel order", self.channel_order, CHANNEL_ORDERS)
        _one_of("layout", self.layout, LAYOUTS)
        for name in self.formats:
            _one_of("image format", name, FORMATS)
        if self.resize_mode == "shorter-side-crop" and (self.resize is None or self.resize < 1):
            raise ValueError(f"resize mode 'shorter-side-crop' needs a positive shorter side, got {self.resize}")
        if self.resize_mode == "squash" and (self.resize is not None or self.crop is not None):
            raise ValueError("a resize or crop needs resize mode 'shorter-side-crop', not 'squash'")
        if self.crop is not None and self.resize is not None and self.crop > self.resize:
            raise ValueError(f"the crop {self.crop} is larger than the resize {self.resize} (the shorter side)")

    def check_crop(self, height: int, width: int) -> None:
        """ValueError when the H x W crop does not fit inside the resized shorter side, or is not the crop named."""
        if self.crop is not None and (height, width) != (self.crop, self.crop):
            raise ValueError(f"the crop {self.crop} is not the model's input size {height}x{width}")
        if self.resize_mode == "shorter-side-crop" and self.resize is not None and max(height, width) > self.resize:
            raise ValueError(f"the crop {height}x{width} is larger than the resize {self.resize} (shorter side)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "formats": list(self.formats)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """The recipe from a model's metadata; ValueError for an unknown key or value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {unknown}; expected some of {sorted(known)}")
        values = {**data, **({"formats": tuple(data["formats"])} if "formats" in data else {})}
        return cls(**values)


def oriented(img: PILImage.Image, prep: Preprocessing) -> PILImage.Image:
    """``img`` turned as its EXIF orientation says, when the recipe applies EXIF."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img) if prep.exif else img


def resized(img: PILImage.Image, prep: Preprocessing, height: int, width: int) -> PILImage.Image:
    """``img`` brought to H x W as the recipe says (squash, or shorter side then centre crop)."""
    from PIL import Image

    resample = getattr(Image.Resampling, prep.interpolation.upper())
    if prep.resize_mode == "squash" or prep.resize is None:
        return img.resize((width, height), resample)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == prep.resize:  # torchvision leaves an image whose shorter side already fits as it is
        return _centre(img, height, width)
    new_long = int(prep.resize * long / short)
    size = (prep.resize, new_long) if w <= h else (new_long, prep.resize)
    return _centre(img.resize(size, resample), height, width)


def _centre(img: PILImage.Image, height: int, width: int) -> PILImage.Image:
    """The centre H x W of ``img``, offsets rounded as torchvision's CenterCrop rounds them."""
    top, left = round((img.size[1] - height) / 2.0), round((img.size[0] - width) / 2.0)
    return img.crop((left, top, left + width, top + height))
