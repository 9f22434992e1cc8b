"""``bnfold-export --onnx FILE --recalibrate DIR``: the paper's Algorithm 2 inside an ONNX graph, without torch.

Ioffe & Szegedy (2015), Algorithm 2, steps 8-10, exactly as ``training.population.recalibrate_bn`` does it for a
torch module: mini-batches pass through the training network (``export.recalibration.training_form``: every BN
normalising with its own batch's statistics), and for each BN, over the batches B,

    E[x]   = mean_B mu_B
    Var[x] = mean_B (m_B / (m_B - 1)) sigma_B^2        m_B = values per channel in B (N * H * W for a conv BN)

accumulated in float64 (for equal batch sizes the second line is the paper's m/(m-1) E_B[sigma_B^2]).
Batches: the images in ``export.sources.images.load_images``' order (classes sorted, files sorted), cut into
consecutive runs of ``--recalibrate-batch-size``; a short last batch is used too. The torch path cuts the same
batches (``recalibration_batches``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from export.errors import ExportError
from export.folding.onnx_bn import constant_array
from export.recalibration.training_form import Observed, batchnorm_nodes, training_form, with_statistics
from export.sources.images import ImageSet
from export.verification.checks import ort_session, session_runner

logger = logging.getLogger(__name__)

METHOD = "Algorithm 2 (Ioffe & Szegedy, 2015): E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2]"


def recalibration_batches(images: ImageSet, batch_size: int) -> list[np.ndarray]:
    """``images.x`` cut into consecutive mini-batches of ``batch_size`` (the last may be shorter; a last batch
    of one image joins the one before, since Algorithm 2 needs m >= 2)."""
    if batch_size < 2:
        raise ExportError(f"--recalibrate-batch-size must be at least 2, got {batch_size}")
    if len(images.x) < batch_size:
        raise ExportError(
            f"--recalibrate {images.root} holds {len(images.x)} images, fewer than one mini-batch of "
            f"--recalibrate-batch-size {batch_size}; add images or lower the batch size"
        )
    batches = [images.x[i : i + batch_size] for i in range(0, len(images.x), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


@dataclass
class _Accumulator:
    """Float64 sums of one BN's per-batch means and unbiased variances."""

    mean_sum: np.ndarray | None = None
    var_sum: np.ndarray | None = None
    batches: int = 0

    def add(self, label: str, mean: np.ndarray, var: np.ndarray, shape: np.ndarray) -> None:
        m = int(np.prod(shape)) // int(shape[1])
        if m < 2:
            raise ExportError(
                f"--recalibrate: BatchNormalization {label!r} saw {m} value per channel in a mini-batch; Algorithm 2 "
                "needs at least 2 (a short last batch of one image? change --recalibrate-batch-size)"
            )
        unbiased = var.astype(np.float64) * (m / (m - 1))
        self.mean_sum = mean.astype(np.float64) if self.mean_sum is None else self.mean_sum + mean
        self.var_sum = unbiased if self.var_sum is None else self.var_sum + unbiased
        self.batches += 1

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.mean_sum is not None and self.var_sum is not None
        return self.mean_sum / self.batches, self.var_sum / self.batches


def population_statistics(
    model: onnx.ModelProto, input_name: str, batches: list[np.ndarray]
) -> tuple[list[Observed], list[tuple[np.ndarray, np.ndarray]]]:
    """Each BN's (mean, var) by Algorithm 2 over ``batches``, in graph order, run by ONNX Runtime."""
    form, observed = training_form(model)
    session = ort_session(form.SerializeToString(), "disable_all")
    names = [name for o in observed for name in (o.mean, o.var, o.shape)]
    accumulators = [_Accumulator() for _ in observed]
    for index, batch in enumerate(batches):
        try:
            values = session.run(names, {input_name: np.ascontiguousarray(batch)})
        except Exception as exc:  # ONNX Runtime raises its own types; any failure means these inputs do not fit
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(
                f"--recalibrate: mini-batch {index} (shape {batch.shape}) does not run through the graph: {first}"
            ) from exc
        for i, (o, acc) in enumerate(zip(observed, accumulators, strict=True)):
            acc.add(o.label, *values[3 * i : 3 * i + 3])
    return observed, [acc.result() for acc in accumulators]


def onnx_accuracy(model: onnx.ModelProto, input_name: str, output_name: str, images: ImageSet) -> float:
    """Top-1 accuracy of ``model`` (run by ONNX Runtime) on a labelled image set."""
    assert images.y is not None
    run = session_runner(ort_session(model.SerializeToString(), "disable_all"), input_name, output_name)
    logits = np.concatenate([run(images.x[i : i + 64]) for i in range(0, len(images.x), 64)])
    return float((logits.argmax(1) == images.y).mean())


def _changes(
    model: onnx.ModelProto, observed: list[Observed], stats: list[tuple[np.ndarray, np.ndarray]], batches: int
) -> dict[str, dict[str, float]]:
    """Per BN, how far its statistics moved (as the torch path reports it)."""
    nodes = batchnorm_nodes(ir.serde.deserialize_model(model), "--recalibrate")
    report: dict[str, dict[str, float]] = {}
    for node, o, (mean, var) in zip(nodes, observed, stats, strict=True):
        row: dict[str, float] = {"batches": float(batches)}
        old_mean, old_var = constant_array(node.inputs[3]), constant_array(node.inputs[4])
        if old_mean is not None and old_var is not None:
            row["max_abs_mean_change"] = float(np.abs(mean - old_mean.astype(np.float64)).max())
            rel = np.abs(var - old_var.astype(np.float64)) / np.maximum(old_var.astype(np.float64), 1e-12)
            row["max_rel_var_change"] = float(rel.max())
        report[o.label] = row
    return report


def recalibrate_onnx(
    model: onnx.ModelProto,
    names: tuple[str, str],
    images: ImageSet,
    batch_size: int,
    check: ImageSet | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``model`` with every BN in inference mode holding Algorithm 2's statistics over ``images``, and the report.

    ``names``: the graph's (input, output). With labelled images (``check``, else ``images``), the report gives
    the top-1 accuracy with the file's own statistics and with the recomputed ones.
    """
    batches = recalibration_batches(images, batch_size)
    observed, stats = population_statistics(model, names[0], batches)
    recalibrated = with_statistics(model, stats)
    result: dict[str, Any] = {
        "method": METHOD,
        "images": str(images.root),
        "samples": len(images.x),
        "batch_size": batch_size,
        "batches": len(batches),
        "layers": _changes(model, observed, stats, len(batches)),
    }
    labelled = check if check is not None and check.y is not None else (images if images.y is not None else None)
    if labelled is not None:
        before = onnx_accuracy(with_statistics(model), *names, labelled)
        after = onnx_accuracy(recalibrated, *names, labelled)
        result["accuracy"] = {"evaluated_on": str(labelled.root), "own_statistics": before, "recalibrated": after}
        logger.info(
            "accuracy on %s: %.4f with the file's own statistics, %.4f recalibrated", labelled.root, before, after
        )
    logger.info("recalibrated %d BatchNormalization nodes over %d mini-batches (Algorithm 2)", len(stats), len(batches))
    return recalibrated, result
