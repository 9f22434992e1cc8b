"""Image decoding and preprocessing exactly as the model's metadata says (size, channels, normalisation).

Training scaled pixels to [0, 1] and normalised each channel with the training split's mean and std; the
same steps run here: decode -> grey or RGB -> bilinear resize to the model's H x W -> /255 -> (x-mean)/std.

Only PNG and JPEG are opened. The pixel budget (``BNFOLD_MAX_IMAGE_PIXELS``) is checked from the image header,
before any pixel is decoded, and decoding runs in a small thread pool of its own, off the event loop (Pillow
releases the GIL while it decodes and resizes), so a large image never stalls other requests or health checks.
"""

from __future__ import annotations

import asyncio
import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import ApiError, bad_request
from service.model import ModelVersion

ACCEPTED = ["PNG", "JPEG"]
DECODE_THREADS = 2  # images decoded at once, whatever the number of requests: bounds their memory too
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
_decoder: ThreadPoolExecutor | None = None


def _check_model(model: ModelVersion) -> tuple[int, int, int]:
    if len(model.sample_shape) != 3 or model.sample_shape[0] not in (1, 3):
        raise bad_request(
            f"model {model.name!r} does not take 1- or 3-channel images (input shape {list(model.sample_shape)})"
        )
    channels, height, width = model.sample_shape
    return channels, height, width


def preprocess(data: bytes, model: ModelVersion, max_pixels: int, filename: str = "image") -> np.ndarray:
    """One image's bytes -> float32 (C, H, W) ready for ``model``; 413 over ``max_pixels``, 415 if unreadable."""
    channels, height, width = _check_model(model)
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED) as img:
            if img.width * img.height > max_pixels:  # from the header: nothing is decoded yet
                raise ApiError(
                    413,
                    f"{filename}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels} pixels "
                    f"(BNFOLD_MAX_IMAGE_PIXELS)",
                )
            converted = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(converted, dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ApiError(415, f"{filename} is not a PNG or JPEG image") from None
    except Image.DecompressionBombError:
        raise ApiError(413, f"{filename}: too many pixels (BNFOLD_MAX_IMAGE_PIXELS is {max_pixels})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's errors for broken image data
        detail = _OBJECT_REPR.sub("", str(exc)) or type(exc).__name__
        raise ApiError(415, f"{filename} is not a readable PNG or JPEG image ({detail})") from None
    x = arr[None] if channels == 1 else arr.transpose(2, 0, 1)  # (C, H, W)
    norm = model.normalization
    if norm is not None:
        mean, std = norm
        x = (x - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _preprocess_all(images: list[tuple[str, bytes]], model: ModelVersion, max_pixels: int) -> np.ndarray:
    return np.stack([preprocess(data, model, max_pixels, name) for name, data in images])  # (N, C, H, W)


async def decode_images(images: list[tuple[str, bytes]], model: ModelVersion, max_pixels: int) -> np.ndarray:
    """(filename, bytes) pairs -> one float32 batch (N, C, H, W), decoded off the event loop."""
    global _decoder
    _check_model(model)
    if _decoder is None:
        _decoder = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="image-decode")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoder, _preprocess_all, images, model, max_pixels)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out
