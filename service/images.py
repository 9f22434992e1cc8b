"""Image decoding and preprocessing exactly as the model's metadata says (size, channels, normalisation).

The steps (decode -> grey or RGB -> bilinear resize to the model's H x W -> /255 -> (x-mean)/std) are
:mod:`contracts.images`, the same function training and export use, so an image becomes the same tensor here
as it did there.

Only PNG and JPEG are opened. The pixel budget (``BNFOLD_MAX_IMAGE_PIXELS``) is checked from the image header,
before any pixel is decoded, and decoding runs in a small thread pool of its own, off the event loop (Pillow
releases the GIL while it decodes and resizes), so a large image never stalls other requests or health checks.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from contracts.images import ImageError, ImageSpec, ImageTooLarge
from contracts.images import preprocess as preprocess_image
from service.errors import ApiError, bad_request
from service.model import ModelVersion

ACCEPTED = ("PNG", "JPEG")
DECODE_THREADS = 2  # images decoded at once, whatever the number of requests: bounds their memory too
_decoder: ThreadPoolExecutor | None = None


def image_spec(model: ModelVersion) -> ImageSpec:
    """What ``model`` takes, as the image contract's spec (its metadata's normalisation included); 400 if it
    takes no 1- or 3-channel image."""
    shape = model.sample_shape
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise bad_request(f"model {model.name!r} does not take 1- or 3-channel images (input shape {list(shape)})")
    norm = model.normalization
    mean, std = (None, None) if norm is None else (norm[0].tolist(), norm[1].tolist())
    return ImageSpec.from_shape(shape, mean, std)


def preprocess(data: bytes, model: ModelVersion, max_pixels: int, filename: str = "image") -> np.ndarray:
    """One image's bytes -> float32 (C, H, W) ready for ``model``; 413 over ``max_pixels``, 415 if unreadable."""
    spec = image_spec(model)
    try:
        return preprocess_image(data, spec, name=filename, formats=ACCEPTED, max_pixels=max_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, f"{exc} (BNFOLD_MAX_IMAGE_PIXELS)") from None
    except ImageError as exc:
        raise ApiError(415, str(exc)) from None


def _preprocess_all(images: list[tuple[str, bytes]], model: ModelVersion, max_pixels: int) -> np.ndarray:
    return np.stack([preprocess(data, model, max_pixels, name) for name, data in images])  # (N, C, H, W)


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
