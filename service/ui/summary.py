"""The page's two JSON documents: the models (what is served and its proof) and the live figures.

Both are read-only views of what the server already holds: the model manager, and the same Prometheus
registry that ``/metrics`` exposes. Rates and percentiles are computed by the page from two snapshots, so
the server keeps no state for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from prometheus_client import Metric

from service.manager import ModelManager
from service.model import ModelVersion
from service.ui.proof import read_proof, source

VARIANT_SUFFIXES = {"-fp16": "float16", "-int8": "int8"}  # as bnfold-export names a model's variants
CANVAS_MAX_PIXELS = 64 * 64  # single-channel models up to this size get a canvas to draw on


def base_name(name: str) -> str:
    """The model a variant belongs to: ``digits`` for ``digits-fp16`` and ``digits-int8``."""
    for suffix in VARIANT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _input(m: ModelVersion) -> dict[str, Any]:
    shape = list(m.sample_shape)
    images = len(shape) == 3 and shape[0] in (1, 3)
    norm = (m.metadata.get("bnfold.input") or {}).get("normalization") or None
    return {
        "name": m.input_name,
        "datatype": m.input_datatype,
        "shape": [-1, *shape],
        "normalization": norm,
        "takes_images": images,
        "canvas": images and shape[0] == 1 and shape[1] * shape[2] <= CANVAS_MAX_PIXELS,
    }


def version_summary(m: ModelVersion) -> dict[str, Any]:
    """One loaded version: how it runs, what it takes, where it came from and its proof."""
    found, note = read_proof(m.path.parent)
    return {
        "version": str(m.version),
        "provider": m.provider,
        "precision": str(m.metadata.get("bnfold.precision", "float32")),
        "max_batch_size": m.max_batch_size,
        "input": _input(m),
        "labels": m.labels,
        "source": source(m.metadata),
        "proof": found,
        "proof_note": note,
    }


def models_summary(manager: ModelManager) -> dict[str, Any]:
    """Every model of the repository, loaded or not, with its variants and its loaded versions."""
    entries = manager.scan_index()
    names = [e.name for e in entries]
    models = []
    for entry in entries:
        served = manager.models.get(entry.name, {})
        base = base_name(entry.name)
        models.append(
            {
                "name": entry.name,
                "state": entry.state,
                "reason": entry.reason,
                "variants": [n for n in names if base_name(n) == base],
                "versions": [version_summary(served[v].model) for v in sorted(served, reverse=True)],
            }
        )
    return {"ready": manager.ready and not manager.draining, "models": models}


def _series(per: dict[str, dict[str, Any]], labels: dict[str, str]) -> dict[str, Any]:
    key = f"{labels.get('model', '')}/{labels.get('version', '')}"
    return per.setdefault(
        key,
        {"model": labels.get("model", ""), "version": labels.get("version", ""), "requests": {}, "queue_depth": 0.0,
         "latency": [], "latency_count": 0.0, "batch_sizes": [], "batches": 0.0},
    )  # fmt: skip


def _bound(le: str) -> float | None:
    """A bucket's upper bound; None for +Inf (JSON has no infinity)."""
    value = float(le)
    return value if math.isfinite(value) else None


def live_summary(families: Iterable[Metric]) -> dict[str, Any]:
    """Cumulative figures per model version from the metric families of the server's registry: requests by
    outcome, the request-latency and batch-size histograms (cumulative buckets, as Prometheus has them) and
    the queue depth."""
    per: dict[str, dict[str, Any]] = {}
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if "model" not in labels:
                continue
            if name == "bnfold_requests_total":
                _series(per, labels)["requests"][labels["outcome"]] = value
            elif name == "bnfold_queue_depth":
                _series(per, labels)["queue_depth"] = value
            elif name == "bnfold_request_seconds_bucket":
                _series(per, labels)["latency"].append([_bound(labels["le"]), value])
            elif name == "bnfold_request_seconds_count":
                _series(per, labels)["latency_count"] = value
            elif name == "bnfold_batch_size_bucket":
                _series(per, labels)["batch_sizes"].append([_bound(labels["le"]), value])
            elif name == "bnfold_batch_size_count":
                _series(per, labels)["batches"] = value
    return {"series": [per[k] for k in sorted(per)]}
