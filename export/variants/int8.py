"""``quantize_int8``: a statically quantized int8 variant of a folded float32 graph, verified and gated.

Transform (ONNX Runtime's ``quantize_static``, QDQ format): every Conv/Gemm/MatMul weight W becomes int8 per
output channel c, q_c = clip(round(W_c / s_c), -127, 127) with s_c = max|W_c| / 127 (symmetric, zero point
0), and a DequantizeLinear restores s_c * q_c in front of the op; each activation tensor gets a fixed uint8
scale and zero point from the ranges seen on calibration samples (MinMax, Entropy or Percentile), as a
QuantizeLinear/DequantizeLinear pair. ONNX Runtime fuses these into integer kernels at session creation
(uint8 activations x int8 weights, the fast pairing on x86 with AVX-512 VNNI or AVX2).

Preconditions: the graph is folded (no BatchNormalization, so each conv's weights carry the normalisation
and quantize per channel directly), has one float32 input with a batch axis, and real calibration samples
are given (refused otherwise). The int8 variant keeps the float32 input and output.

Verification, on the session as it is served (ONNX Runtime CPU provider, full graph optimisation):
1. batch invariance: each sample alone vs inside a batch of 8 (static scales make samples independent);
2. top-1 agreement with the float32 graph on the whole validation split, and the accuracy of both when labels
   are given. THE GATE: agreement >= 99% and accuracy drop <= 0.5 points (without labels, agreement alone,
   stated in the report). A variant that misses it raises ``VerificationError`` with the figures; the
   quantized graph is written to a temporary file beside ``out_path`` and renamed into place only on success.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.errors import ExportError, VerificationError
from export.graph.inspect import count_ops
from export.variants.int8_calibration import calibrate, calibration_method, check_calibration
from export.variants.int8_sensitivity import LayerError, layer_errors
from export.verification.checks import (
    FLOOR,
    Check,
    Reference,
    Tolerance,
    batch_invariance,
    ort_session,
    run_batched,
    top1_agreement,
)
from training.atomic import staged_file

logger = logging.getLogger(__name__)

MAX_CALIBRATION_SAMPLES = 512
SENSITIVITY_SAMPLES = 32


@dataclass(frozen=True)
class Int8Gate:
    """What an int8 variant must reach against its float32 original to be written."""

    min_agreement: float = 0.99  # share of the validation split with the same top-1 class
    max_accuracy_drop: float = 0.5  # percentage points

    def line(self) -> str:
        return f"top-1 agreement >= {self.min_agreement:.1%}, accuracy drop <= {self.max_accuracy_drop:g} points"


@dataclass
class Int8Report:
    """The int8 variant's figures: calibration, verification, the gate's verdict and per-layer error."""

    path: Path
    method: str
    calibration_samples: int
    gate: Int8Gate
    agreement: float
    validation_samples: int
    accuracy_fp32: float | None
    accuracy_int8: float | None
    checks: list[Check] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy_drop(self) -> float | None:
        """fp32 accuracy minus int8 accuracy, in percentage points (None without labels)."""
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return round((self.accuracy_fp32 - self.accuracy_int8) * 100, 4)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def gate_line(self) -> str:
        """The gate and the measured figures, in one line."""
        accuracy = (
            "accuracy not measured (no labels)"
            if self.accuracy_drop is None
            else f"accuracy {self.accuracy_fp32:.2%} fp32 -> {self.accuracy_int8:.2%} int8 "
            f"(drop {self.accuracy_drop:.2f} points)"
        )
        return (
            f"int8 gate ({self.gate.line()}): agreement {self.agreement:.2%} on {self.validation_samples} "
            f"validation samples, {accuracy}"
        )

    def most_sensitive(self) -> LayerError | None:
        """The layer that adds the most quantization noise: the first to keep in float."""
        rated = [la for la in self.layers if la.added_noise_db is not None]
        return max(rated, key=lambda la: la.added_noise_db or 0.0) if rated else None

    def to_dict(self) -> dict[str, Any]:
        worst = self.most_sensitive()
        return {
            "path": str(self.path),
            "precision": "int8",
            "format": "QDQ, per-channel int8 weights, uint8 activations",
            "calibration": {"method": self.method, "samples": self.calibration_samples},
            "gate": {
                "min_agreement": self.gate.min_agreement,
                "max_accuracy_drop_points": self.gate.max_accuracy_drop,
                "agreement": self.agreement,
                "validation_samples": self.validation_samples,
                "accuracy_fp32": self.accuracy_fp32,
                "accuracy_int8": self.accuracy_int8,
                "accuracy_drop_points": self.accuracy_drop,
                "passed": self.passed,
                "summary": self.gate_line(),
            },
            "verification": [c.to_dict() for c in self.checks],
            "layers": [la.to_dict() for la in self.layers],
            "most_sensitive_layer": worst.layer if worst else None,
            "onnx_ops": self.nodes,
        }


class _DropPreprocessHint(logging.Filter):
    """ONNX Runtime's quantizer logs on the root logger that pre-processing is advised; bnfold's graphs are
    already folded and constant-folded by the exporter, so the hint is noise in an export's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _quantize(src: Path, dst: Path, x: np.ndarray, input_name: str, method: str) -> None:
    """Calibrate, ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations), bnfold's metadata."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    hint, chatter = _DropPreprocessHint(), io.StringIO()
    logging.getLogger().addFilter(hint)
    try:
        with tempfile.TemporaryDirectory(prefix="bnfold-int8-") as tmp, contextlib.redirect_stdout(chatter):
            cache = Path(tmp) / "ranges.json"  # the calibrators print their progress: kept for the debug log
            options = calibrate(src, x, input_name, method, cache)
            quantize_static(
                str(src),
                str(dst),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=calibration_method(method),
                calibration_cache_path=cache,
            )
    except Exception as exc:  # the quantizer raises many types; all mean "this graph does not quantize"
        raise ExportError(f"int8 quantization of {src} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        logging.getLogger().removeFilter(hint)
        logger.debug("calibration and quantize_static: %s", chatter.getvalue())
    proto = onnx.load(str(dst))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["bnfold.precision"] = json.dumps("int8")
    meta["bnfold.quantization"] = json.dumps(
        {
            "format": "QDQ",
            "weights": "int8, per output channel, symmetric",
            "activations": "uint8, per tensor",
            "method": method,
            "method_options": options,
            "samples": len(x),
        }
    )
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, str(dst))


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((logits.argmax(axis=1) == labels).mean())


def _verify(
    src: Path, dst: Path, names: tuple[str, str], vx: np.ndarray, vy: np.ndarray | None, gate: Int8Gate
) -> tuple[list[Check], float, float | None, float | None]:
    """Checks 1-2 of the module docstring on the served configuration; (checks, agreement, acc fp32, acc int8)."""
    input_name, output_name = names
    fp32, int8 = ort_session(src, "enable_all"), ort_session(dst, "enable_all")

    def run_int8(x: np.ndarray) -> np.ndarray:
        return int8.run([output_name], {input_name: np.ascontiguousarray(x)})[0]

    def run_fp32(x: np.ndarray) -> np.ndarray:
        return fp32.run([output_name], {input_name: np.ascontiguousarray(x)})[0]

    checks = [batch_invariance(run_int8, vx, samples=8, floor=FLOOR)]
    ref, got = run_batched(run_fp32, vx), run_batched(run_int8, vx)
    fp32_ref = Reference("validation", vx, ref.astype(np.float64), ref)  # judged by share, not by the oracle
    agreement = top1_agreement(got, fp32_ref, Tolerance("int8", min_agreement=gate.min_agreement))
    checks.append(agreement)
    acc_fp32, acc_int8 = _accuracy(ref, vy), _accuracy(got, vy)
    if acc_fp32 is not None and acc_int8 is not None:
        drop = (acc_fp32 - acc_int8) * 100
        checks.append(
            Check(
                "accuracy drop",
                drop <= gate.max_accuracy_drop,
                len(vx),
                detail=f"{acc_fp32:.2%} fp32 -> {acc_int8:.2%} int8, drop {drop:.2f} points "
                f"(allowed {gate.max_accuracy_drop:g})",
            )
        )
    share = float((got.argmax(axis=1) == ref.argmax(axis=1)).mean())
    return checks, share, acc_fp32, acc_int8


def _check_inputs(
    src: Path, validation_x: np.ndarray | None, validation_y: np.ndarray | None, names: tuple[str, str]
) -> np.ndarray:
    """The validation inputs as float32, once the graph and the split are known to fit together."""
    if not src.is_file():
        raise ExportError(f"{src}: no such float32 ONNX graph to quantize")
    if validation_x is None or len(validation_x) == 0:
        raise ExportError("int8 export needs a validation split to verify the variant against; none was given")
    if validation_y is not None and len(validation_y) != len(validation_x):
        raise ExportError(f"{len(validation_y)} validation labels for {len(validation_x)} validation samples")
    graph = onnx.load(str(src), load_external_data=False).graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    if names[0] not in inputs or names[1] not in outputs:
        raise ExportError(f"{src}: expected input {names[0]!r} and output {names[1]!r}, found {inputs} and {outputs}")
    return np.asarray(validation_x, dtype=np.float32)


def quantize_int8(
    fp32_model_path: Path,
    out_path: Path,
    calibration: np.ndarray | None,
    method: str = "minmax",
    validation_x: np.ndarray | None = None,
    validation_y: np.ndarray | None = None,
    input_name: str = "input",
    output_name: str = "logits",
    *,
    gate: Int8Gate | None = None,
    max_calibration_samples: int = MAX_CALIBRATION_SAMPLES,
) -> Int8Report:
    """Quantize the folded graph at ``fp32_model_path`` to int8, verify it, gate it, then write ``out_path``.

    ``calibration``: real input samples (at most ``max_calibration_samples`` are used, evenly spaced);
    ``validation_x``/``validation_y``: the whole validation split and its labels (labels optional). Raises
    ``ExportError`` on bad input and ``VerificationError`` below the gate; in both cases nothing is written.
    """
    with staged_file(Path(out_path)) as tmp:
        report = write_int8(
            Int8Job(Path(fp32_model_path), calibration, method, validation_x, validation_y, (input_name, output_name)),
            tmp,
            gate or Int8Gate(),
            max_calibration_samples,
        )
        report.path = Path(out_path)
    return report


@dataclass
class Int8Job:
    """A verified float32 graph and the data to quantize and gate it with."""

    src: Path
    calibration: np.ndarray | None
    method: str
    validation_x: np.ndarray | None
    validation_y: np.ndarray | None
    names: tuple[str, str] = ("input", "logits")


def write_int8(
    job: Int8Job, dst: Path, gate: Int8Gate, max_calibration_samples: int = MAX_CALIBRATION_SAMPLES
) -> Int8Report:
    """Quantize ``job.src`` into ``dst`` and verify it there against the gate; the caller commits ``dst``.

    Raises ``ExportError`` on bad input and ``VerificationError`` below the gate.
    """
    calibration_method(job.method)  # refuse an unknown method before any work
    vx = _check_inputs(job.src, job.validation_x, job.validation_y, job.names)
    x_cal = check_calibration(job.calibration, tuple(vx.shape[1:]), max_calibration_samples)
    method = job.method.lower()
    _quantize(job.src, dst, x_cal, job.names[0], method)
    checks, agreement, acc_fp32, acc_int8 = _verify(job.src, dst, job.names, vx, job.validation_y, gate)
    report = Int8Report(
        path=dst,
        method=method,
        calibration_samples=len(x_cal),
        gate=gate,
        agreement=agreement,
        validation_samples=len(vx),
        accuracy_fp32=acc_fp32,
        accuracy_int8=acc_int8,
        checks=checks,
        layers=layer_errors(job.src, dst, x_cal[:SENSITIVITY_SAMPLES], job.names[0]),
        nodes=count_ops(onnx.load(str(dst))),
    )
    if not report.passed:
        failed = "; ".join(c.line() for c in checks if not c.passed)
        raise VerificationError(f"int8 variant refused, nothing written. {report.gate_line()}. Failed: {failed}")
    logger.info("%s", report.gate_line())
    return report
