"""A model's path through export, in one place: job -> fold -> float64 reference -> write -> verify -> commit.

    source (checkpoint, torch factory, ONNX file) -> ExportJob   export/sources/
    fold every BatchNorm                          export/folding/
    emit ONNX, check, verify against float64      export/emit/, export/verification/
    fp16 and int8 variants                        export/variants/
    write one version, as one transaction         export/repository/

A failure at any step raises an ExportError naming the cause and leaves the repository exactly as it was.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from export.emit.candidate import Candidate, write_verified
from export.errors import ExportError
from export.job import ExportJob, variant_name
from export.report import ExportReport, library_versions
from export.repository.writer import check_model_name, new_version, render_config
from export.variants.int8 import Int8Gate, Int8Job, Int8Report, write_int8
from export.verification.file import CheckInputs
from training.atomic import write_json_atomic

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
    labelled = (job.labels_output,) if job.labels_output is not None else ()
    layout = job.preprocessing.layout if job.preprocessing is not None else "NCHW"
    specs = (job.input_specs, job.output_specs)
    return render_config(name, *specs, max_batch_size, max_queue_delay_us, layout, labelled)


def _metadata(job: ExportJob, name: str, version: int, precision: str) -> dict[str, Any]:
    model = {**job.metadata.get("bnfold.model", {}), "version": version, "repository_name": name}
    return {
        **job.metadata,
        "bnfold.model": model,
        "bnfold.labels": job.labels,
        "bnfold.input": job.input_meta,
        "bnfold.output": _output_meta(job),
        "bnfold.signature": {
            "inputs": [s.to_dict() for s in job.input_specs],
            "outputs": [s.to_dict() for s in job.output_specs],
        },
        "bnfold.versions": library_versions(),
        "bnfold.precision": precision,
    }


def _output_meta(job: ExportJob) -> dict[str, Any]:
    """``bnfold.output``: the (N, classes) output the labels name, or the first output when none is."""
    if job.labels_output is None:
        return {"name": job.output_specs[0].name, "kind": "tensor", "classes": 0}
    return {"name": job.labels_output, "kind": "logits", "classes": len(job.labels)}


def _candidate(job: ExportJob, precision: str, inputs: CheckInputs) -> Candidate:
    """Step 1, fold: the job's model folded into an ONNX candidate (torch is imported for torch models only)."""
    if isinstance(job.model, onnx.ModelProto):
        from export.emit.from_onnx import onnx_candidate

        return onnx_candidate(job.model, inputs.first(), fp16=precision == "float16", padded=job.padded_bn)
    import torch

    from export.emit.from_torch import torch_candidate

    example = (torch.from_numpy(job.example()),)
    names = (job.input_name, job.output_name)
    return torch_candidate(job.model, example, names, fp16=precision == "float16", padded=job.padded_bn)


def _require_int8_data(job: ExportJob) -> None:
    """Refuse an int8 export without calibration data or a validation split, before any work."""
    if len(job.input_specs) != 1 or job.input_specs[0].dtype != "float32" or len(job.output_specs) != 1:
        raise ExportError("--int8 needs a model with one float32 input and one (N, classes) output")
    if job.calibration is None or len(job.calibration) == 0:
        raise ExportError("--int8 needs calibration data: a checkpoint's training split, or --images DIR")
    if job.validation_x is None:
        raise ExportError("--int8 needs a validation split to gate the variant: a checkpoint, or labelled --images")


def _int8(job: ExportJob, fp32: Path, dst: Path, method: str) -> Int8Report:
    """The int8 variant of the verified float32 graph at ``fp32``, quantized into ``dst`` and gated."""
    names = (job.input_name, job.output_name)
    int8_job = Int8Job(fp32, job.calibration, method, job.validation_x, job.validation_y, names)
    return write_int8(int8_job, dst, Int8Gate())


def produce(
    job: ExportJob, precision: str, version_dir: Path, metadata: dict[str, Any], method: str = "minmax"
) -> tuple[ExportReport, Int8Report | None]:
    """THE export sequence, for every source and variant: fold -> float64 reference -> write -> verify.

    Writes ``version_dir/model.onnx``; ``version_dir`` is the repository's staged version, committed by the
    caller (``new_version``) only when this returns. int8 first verifies the float32 graph (in a temporary
    folder outside the repository), then quantizes and gates it into ``model.onnx``.
    """
    if precision == "int8":
        _require_int8_data(job)
    inputs = CheckInputs.build(job.input_specs, job.samples, job.validation_x)
    inputs.logits, inputs.outputs = job.logits_columns(), job.output_columns()
    candidate = _candidate(job, precision, inputs)
    if job.labels_output is None:
        candidate.warnings.append(job.signature()["classification"])
    if precision != "int8":
        return write_verified(candidate, version_dir / "model.onnx", inputs, metadata), None
    with tempfile.TemporaryDirectory(prefix="bnfold-float32-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        report = write_verified(candidate, fp32, inputs, metadata)
        return report, _int8(job, fp32, version_dir / "model.onnx", method)


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
        report, int8 = produce(job, precision, version_dir, metadata, calibration_method)
        report.path = Path(name) / str(version) / "model.onnx"
        document = {
            **report.to_dict(),
            **({"int8": int8.to_dict()} if int8 is not None else {}),
            "model": metadata["bnfold.model"],
            "labels": job.labels,
            "input": job.input_meta,
            "signature": job.signature(),
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
