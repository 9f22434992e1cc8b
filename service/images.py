"""Image decoding and preprocessing exactly as the model's metadata says (size, channels, normalisation, recipe).

The steps (decode -> EXIF orientation -> grey or RGB -> resize (squash, or shorter side then centre crop) ->
/255 -> channel order and layout -> (x-mean)/std) are :mod:`contracts.images`, the same function training and
export use, so an image becomes the same tensor here as it did there. The recipe is the model's
``bnfold.input.preprocessing`` metadata; a model without one (a bnfold-train checkpoint) gets today's bilinear
squash.

Only the recipe's formats are opened (PNG and JPEG without a recipe; PNG, JPEG and WebP by default with one).
The pixel budget (``BNFOLD_MAX_IMAGE_PIXELS``) is checked from the image header,
before any pixel is decoded, and decoding runs in a small thread pool of its own, off the event loop (Pillow
releases the GIL while it decodes and resizes), so a large image never stalls other requests or health checks.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from contracts.images import ImageError, ImageSpec, ImageTooLarge
from contracts.images import preprocess as preprocess_image
from contracts.preprocessing import Preprocessing
from service.errors import ApiError, bad_request
from service.model import ModelVersion

DECODE_THREADS = 2  # images decoded at once, whatever the number of requests: bounds their memory too
_decoder: ThreadPoolExecutor | None = None


def recipe(model: ModelVersion) -> Preprocessing:
    """The preprocessing recorded at export (``bnfold.input.preprocessing``); today's squash when there is none
    (a bnfold-train checkpoint). A recipe this server cannot read is a 500 naming the model."""
    recorded = (model.metadata.get("bnfold.input") or {}).get("preprocessing")
    if recorded is None:
        return Preprocessing()
    try:
        return Preprocessing.from_dict(dict(recorded))
    except (TypeError, ValueError) as exc:
        raise ApiError(500, f"model {model.name!r} records a preprocessing this server cannot apply: {exc}") from None


def image_spec(model: ModelVersion) -> ImageSpec:
    """What ``model`` takes, as the image contract's spec (its metadata's normalisation and preprocessing
    included); 400 if it takes no 1- or 3-channel image (of a float or uint8 type)."""
    shape, prep = model.sample_shape, recipe(model)
    if model.input_datatype not in ("FP16", "FP32", "FP64", "UINT8"):
        raise bad_request(f"model {model.name!r} does not take images: its input is {model.input_datatype}")
    channels = (shape[-1] if prep.layout == "NHWC" else shape[0]) if len(shape) == 3 else 0
    if channels not in (1, 3):
        raise bad_request(f"model {model.name!r} does not take 1- or 3-channel images (input shape {list(shape)})")
    norm = model.normalization
    mean, std = (None, None) if norm is None else (norm[0].tolist(), norm[1].tolist())
    return ImageSpec.from_shape(shape, mean, std, prep)


def preprocess(data: bytes, model: ModelVersion, max_pixels: int, filename: str = "image") -> np.ndarray:
    """One image's bytes -> float32 (C, H, W), or (H, W, C) for an NHWC model, prepared as its recipe says;
    413 over ``max_pixels``, 415 if unreadable or not one of the recipe's formats."""
    spec = image_spec(model)
    try:
        return preprocess_image(data, spec, name=filename, formats=spec.prep.formats, max_pixels=max_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, f"{exc} (BNFOLD_MAX_IMAGE_PIXELS)") from None
    except ImageError as exc:
        raise ApiError(415, str(exc)) from None


def _preprocess_all(images: list[tuple[str, bytes]], model: ModelVersion, max_pixels: int) -> np.ndarray:
    batch = np.stack([preprocess(data, model, max_pixels, name) for name, data in images])  # (N, C, H, W)
    return as_input_type(batch, model.input_datatype)


def as_input_type(batch: np.ndarray, datatype: str) -> np.ndarray:
    """Prepared images (float32) as the model's input takes them: uint8 pixels 0-255 for a UINT8 input (export
    records no normalisation for one), the float type of a float input."""
    if datatype == "UINT8":
        return np.rint(batch * 255.0).astype(np.uint8)
    if datatype in ("FP16", "FP64"):
        return batch.astype(np.float16 if datatype == "FP16" else np.float64)
    return batch


async def decode_images(images: list[tuple[str, bytes]], model: ModelVersion, max_pixels: int) -> np.ndarray:
    """(filename, bytes) pairs -> one float32 batch (N, C, H, W), decoded off the event loop."""
    global _decoder
    image_spec(model)
    if _decoder is None:
        _decoder = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="image-decode")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoder, _preprocess_all, images, model, max_pixels)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out
