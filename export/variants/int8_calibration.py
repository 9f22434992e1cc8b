"""Calibration data for the int8 variant: the method names bnfold accepts and a reader over real samples.

Static quantization fixes each activation's scale and zero point from the ranges the float graph shows on
calibration samples; without real samples those ranges are guesses, so bnfold refuses to quantize without
them (one clear message, nothing written).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod

from export.errors import ExportError

logger = logging.getLogger(__name__)

METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
CALIBRATION_BATCH = 32
# Histogram settings per method. Entropy is TensorRT's KL-divergence search: 512 histogram bins, searched for
# the 128-bin range that loses the least information. ONNX Runtime's default for it, 128 bins for 128
# quantized bins, leaves one candidate threshold, the min-max range, so Entropy would equal MinMax.
OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 512, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


def calibration_method(name: str) -> CalibrationMethod:
    """ONNX Runtime's calibration method for ``name`` (minmax, entropy or percentile, any case)."""
    method = METHODS.get(name.lower())
    if method is None:
        raise ExportError(f"unknown int8 calibration method {name!r}; expected one of {', '.join(METHODS)}")
    return method


def check_calibration(calibration: np.ndarray | None, sample_shape: tuple[int, ...], max_samples: int) -> np.ndarray:
    """The calibration samples as float32 (at most ``max_samples``, evenly spaced), or a clear refusal.

    Refused: no array or an empty one, samples of the wrong shape, non-finite values.
    """
    if calibration is None or len(calibration) == 0:
        raise ExportError(
            "int8 export needs calibration data: real input samples (the checkpoint's training split, or --images "
            "DIR for a model brought from elsewhere); none were given, so nothing was written"
        )
    x = np.asarray(calibration, dtype=np.float32)
    if tuple(x.shape[1:]) != tuple(sample_shape):
        raise ExportError(
            f"int8 calibration samples have shape {tuple(x.shape[1:])} per sample; the model expects {sample_shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ExportError("int8 calibration samples hold NaN or Inf values; calibration needs finite inputs")
    if len(x) > max_samples:
        x = x[np.linspace(0, len(x) - 1, max_samples).round().astype(int)]
    return x


class ArrayReader(CalibrationDataReader):
    """Feeds ``x`` to ONNX Runtime's calibrator in batches of ``batch``; ``rewind`` starts over."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.input_name = input_name
        self.x = x
        self.batch = batch
        self.position = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.position >= len(self.x):
            return None
        chunk = self.x[self.position : self.position + self.batch]
        self.position += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.position = 0


def calibrate(src: Path, x: np.ndarray, input_name: str, method: str, cache: Path) -> dict[str, Any]:
    """Activation ranges of the graph at ``src`` on samples ``x`` by ``method``, saved as ONNX Runtime's
    calibration cache at ``cache`` (for ``quantize_static(calibration_cache_path=...)``); returns the options."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    options = OPTIONS[method]
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static quantizes by default
    with tempfile.TemporaryDirectory(prefix="bnfold-calibration-") as tmp:
        calibrator = create_calibrator(
            src,
            op_types,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibration_method(method),
            extra_options=options,
        )
        calibrator.collect_data(ArrayReader(input_name, x))
        save_tensors_data(calibrator.compute_data(), cache)
    logger.debug("calibrated %s on %d samples by %s %s", src, len(x), method, options)
    return options
