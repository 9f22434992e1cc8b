"""The preprocessing recipe: today's squash by default, channel order and layout, formats, and clear refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contracts.images import ImageError, ImageSpec, preprocess
from contracts.preprocessing import Preprocessing


def _image(width: int = 10, height: int = 7) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def test_the_default_recipe_is_todays_bilinear_squash() -> None:
    img = _image()
    expected = np.asarray(img.resize((4, 5), Image.Resampling.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_array_equal(preprocess(img, ImageSpec(3, 5, 4)), expected)


def test_bgr_and_nhwc_reorder_the_same_pixels() -> None:
    img = _image()
    chw = preprocess(img, ImageSpec(3, 5, 4))
    recipe = Preprocessing(channel_order="BGR", layout="NHWC")
    spec = ImageSpec.from_shape((5, 4, 3), prep=recipe)
    assert (spec.channels, spec.height, spec.width) == (3, 5, 4)
    np.testing.assert_array_equal(preprocess(img, spec), chw[::-1].transpose(1, 2, 0))
    normalised = preprocess(img, ImageSpec.from_shape((5, 4, 3), [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], recipe))
    np.testing.assert_allclose(normalised[..., 0], (chw[2] - 0.5) / 0.2, rtol=1e-6)


def test_webp_is_read_when_the_recipe_accepts_it_and_refused_otherwise() -> None:
    img, spec = _image(), ImageSpec(3, 5, 4)
    data = _encoded(img, "WEBP")
    recipe = Preprocessing(formats=("PNG", "JPEG", "WEBP"))
    np.testing.assert_array_equal(preprocess(data, spec, formats=recipe.formats), preprocess(img, spec))
    with pytest.raises(ImageError, match="is not a PNG or JPEG image"):
        preprocess(data, spec, name="x.webp", formats=Preprocessing().formats)


def test_the_recipe_round_trips_through_metadata() -> None:
    recipe = Preprocessing("shorter-side-crop", 256, 224, "bicubic", True, "BGR", "NHWC", ("PNG", "WEBP"))
    assert Preprocessing.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resize_mode": "stretch"}, "unknown resize mode 'stretch'; expected one of squash, shorter-side-crop"),
        ({"interpolation": "cubic"}, "unknown interpolation 'cubic'"),
        ({"resize_mode": "shorter-side-crop"}, "needs a positive shorter side, got None"),
        (
            {"resize_mode": "shorter-side-crop", "resize": 200, "crop": 224},
            "the crop 224 is larger than the resize 200",
        ),
        ({"resize": 256}, "needs resize mode 'shorter-side-crop'"),
        ({"formats": ("GIF",)}, "unknown image format 'GIF'"),
    ],
)
def test_a_bad_recipe_is_refused_naming_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)  # type: ignore[arg-type]


def test_a_crop_over_the_resized_shorter_side_is_refused_for_the_model() -> None:
    with pytest.raises(ValueError, match="the crop 300x300 is larger than the resize 256"):
        ImageSpec(3, 300, 300, prep=Preprocessing("shorter-side-crop", 256))
    with pytest.raises(ValueError, match="unknown preprocessing field"):
        Preprocessing.from_dict({"resize_mode": "squash", "zoom": 2})
