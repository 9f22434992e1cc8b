"""A model's path through export, in one place: job -> fold -> export -> verify -> write.

    source (checkpoint, torch factory, ONNX file) -> ExportJob   export/sources/
    fold every BatchNorm                          export/folding/
    emit ONNX, check, verify against float64      export/emit/, export/verification/
    fp16 and int8 variants                        export/variants/
    write one version, as one transaction         export/repository/

A failure at any step raises an ExportError naming the cause and leaves the repository exactly as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from export.emit.from_torch import export_onnx
from export.errors import ExportError
from export.job import ExportJob, variant_name
from export.report import ExportReport
from export.repository.writer import TensorSpec, check_model_name, new_version, render_config
from export.variants.int8 import Int8Report, quantize_int8
from training.atomic import write_json_atomic
from training.checkpoint import library_versions

logger = logging.getLogger(__name__)


@dataclass
class VersionWritten:
    """Where the new version went and the report that proved it (``int8``: the quantized variant's own)."""

    model_dir: Path
    version: int
    report: ExportReport
    int8: Int8Report | None = None

    @property
    def path(self) -> Path:
        return self.model_dir / str(self.version)


def _config(job: ExportJob, name: str, max_batch_size: int, max_queue_delay_us: int) -> str:
    if max_batch_size < 1:
        raise ExportError(f"--max-batch-size must be at least 1, got {max_batch_size}")
    inputs = [TensorSpec(job.input_name, "float32", job.input_shape)]
    outputs = [TensorSpec(job.output_name, "float32", (len(job.labels),))]
    return render_config(name, inputs, outputs, max_batch_size, max_queue_delay_us)


def _metadata(job: ExportJob, name: str, version: int, precision: str) -> dict[str, Any]:
    model = {**job.metadata.get("bnfold.model", {}), "version": version, "repository_name": name}
    return {
        **job.metadata,
        "bnfold.model": model,
        "bnfold.labels": job.labels,
        "bnfold.input": job.input_meta,
        "bnfold.output": {"name": job.output_name, "kind": "logits", "classes": len(job.labels)},
        "bnfold.versions": library_versions(),
        "bnfold.precision": precision,
    }


def _int8(job: ExportJob, path: Path, metadata: dict[str, Any], method: str) -> tuple[ExportReport, Int8Report]:
    """The verified float32 graph first, then its int8 variant at ``path``, calibrated and gated."""
    if job.calibration is None or len(job.calibration) == 0:
        raise ExportError("--int8 needs calibration data: a checkpoint's training split, or --images DIR")
    if job.validation_x is None:
        raise ExportError("--int8 needs a validation split to gate the variant: a checkpoint, or labelled --images")
    fp32_path = path.with_name(".float32.onnx")
    try:
        report = _emit(job, fp32_path, metadata, "float32")
        int8 = quantize_int8(
            fp32_path, path, job.calibration, method, job.validation_x, job.validation_y, job.input_name,
            job.output_name,
        )  # fmt: skip
    finally:
        fp32_path.unlink(missing_ok=True)
    return report, int8


def _emit(job: ExportJob, path: Path, metadata: dict[str, Any], precision: str) -> ExportReport:
    """Fold, export and verify ``job.model`` into ``path`` (nothing there unless every check passes)."""
    if isinstance(job.model, onnx.ModelProto):
        from export.emit.from_onnx import export_onnx_graph

        if precision != "float32":
            raise ExportError(f"a {precision} variant needs a PyTorch model; an ONNX input exports float32 only")
        return export_onnx_graph(
            job.model,
            path,
            metadata=metadata,
            samples=job.samples,
            validation=job.validation_x,
            input_checked=job.onnx_checked,
            padded=job.padded_bn,
        )
    return export_onnx(
        job.model,
        (torch.from_numpy(job.example()),),
        path,
        input_name=job.input_name,
        output_name=job.output_name,
        metadata=metadata,
        samples=torch.from_numpy(job.samples) if job.samples is not None else None,
        validation=torch.from_numpy(job.validation_x) if job.validation_x is not None else None,
        fp16=precision == "float16",
        padded=job.padded_bn,
    )


def export_job(
    job: ExportJob,
    repository: Path,
    name: str | None = None,
    *,
    precision: str = "float32",
    max_batch_size: int = 64,
    max_queue_delay_us: int = 500,
    calibration_method: str = "minmax",
) -> VersionWritten:
    """Fold, export and verify ``job``, then add it as the next version of its model in ``repository``.

    ``precision`` "float16" writes ``<name>-fp16`` and "int8" ``<name>-int8`` (statically quantized, calibrated
    with ``calibration_method`` and gated): a variant never becomes a version of ``<name>`` itself.
    """
    name = check_model_name(variant_name(name or job.name, precision))
    config = _config(job, name, max_batch_size, max_queue_delay_us)
    with new_version(repository, name, config, job.labels) as (version_dir, version):
        metadata = _metadata(job, name, version, precision)
        int8 = None
        if precision == "int8":
            report, int8 = _int8(job, version_dir / "model.onnx", metadata, calibration_method)
        else:
            report = _emit(job, version_dir / "model.onnx", metadata, precision)
        report.path = Path(name) / str(version) / "model.onnx"
        document = {
            **report.to_dict(),
            **({"int8": int8.to_dict()} if int8 is not None else {}),
            "model": metadata["bnfold.model"],
            "labels": job.labels,
            "input": job.input_meta,
            **job.report,
            "export_versions": library_versions(),
        }
        write_json_atomic(version_dir / "export_report.json", document)
    logger.info("wrote %s version %d", repository / name, version)
    return VersionWritten(repository / name, version, report, int8)


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    *,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 500,
    fp16: bool = False,
    data_dir: Path | None = None,
) -> VersionWritten:
    """A bnfold training checkpoint -> the next verified version of ``name`` (``<name>-fp16`` with ``fp16``)."""
    from export.sources.checkpoint import job_from_checkpoint

    job = job_from_checkpoint(checkpoint, data_dir)
    precision = "float16" if fp16 else "float32"
    return export_job(
        job, repository, name, precision=precision, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us
    )
