"""Image decoding and preprocessing exactly as the model's metadata says (size, channels, normalisation).

Training scaled pixels to [0, 1] and normalised each channel with the training split's mean and std; the
same steps run here: decode -> grey or RGB -> bilinear resize to the model's H x W -> /255 -> (x-mean)/std.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import bad_request
from service.model import ModelVersion

ACCEPTED = ("PNG", "JPEG")
MAX_PIXELS = 50_000_000


def preprocess(data: bytes, model: ModelVersion, filename: str = "image") -> np.ndarray:
    """One image's bytes -> float32 (C, H, W) ready for ``model``."""
    if len(model.sample_shape) != 3:
        raise bad_request(f"model {model.name!r} does not take images (input shape {list(model.sample_shape)})")
    channels, height, width = model.sample_shape
    if channels not in (1, 3):
        raise bad_request(f"model {model.name!r} takes {channels}-channel input; images have 1 or 3")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ACCEPTED:
                raise bad_request(f"{filename}: {img.format or 'unknown'} images are not accepted; send PNG or JPEG")
            if img.width * img.height > MAX_PIXELS:
                raise bad_request(f"{filename}: {img.width}x{img.height} pixels is too large")
            converted = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(converted, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise bad_request(f"{filename} is not a readable PNG or JPEG image ({exc})") from None
    x = arr[None] if channels == 1 else arr.transpose(2, 0, 1)  # (C, H, W)
    norm = model.normalization
    if norm is not None:
        mean, std = norm
        x = (x - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out
