"""A PyTorch model from anywhere as an export job: a factory imported by its path, weights that are only tensors.

``PACKAGE.MODULE:FACTORY`` is imported with importlib, so torchvision, timm or the user's own module on
``PYTHONPATH`` all work. Weights come from safetensors, or from a state dict read with
``torch.load(weights_only=True)``: nothing beyond tensors is ever unpickled. ``--images`` supplies real
inputs (and, when labelled, top-1 agreement and accuracy); ``--recalibrate`` recomputes every BatchNorm's
population statistics by the paper's Algorithm 2 (``training.population.recalibrate_bn``) before folding.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contracts.errors import first_line
from contracts.preprocessing import Preprocessing
from export.errors import ExportError
from export.job import ExportJob
from export.recalibration.algorithm2 import METHOD, recalibration_batches
from export.sources.images import ImageSet, load_images, recipe_for
from export.sources.labels import resolve_labels
from training.population import recalibrate_bn

logger = logging.getLogger(__name__)


@dataclass
class TorchSource:
    """What the user named on the command line for ``bnfold-export --torch``."""

    factory: str  # PACKAGE.MODULE:FACTORY
    weights: Path
    input_shape: tuple[int, ...]
    factory_args: dict[str, Any] = field(default_factory=dict)
    labels_file: Path | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    images: Path | None = None
    recalibrate: Path | None = None
    recalibrate_batch_size: int = 32
    preprocessing: Preprocessing | None = None


def import_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``PACKAGE.MODULE:FACTORY`` (the factory may be a dotted attribute path)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(f"--torch {spec!r}: expected PACKAGE.MODULE:FACTORY, e.g. torchvision.models:resnet50")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can raise anything; all mean "this factory path does not import"
        raise ExportError(
            f"--torch {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc}); is it installed or on "
            "PYTHONPATH?"
        ) from exc
    try:
        factory = functools.reduce(getattr, attr.split("."), module)
    except AttributeError as exc:
        raise ExportError(f"--torch {spec!r}: module {module_name!r} has no attribute {attr!r}") from exc
    if not callable(factory):
        raise ExportError(f"--torch {spec!r}: {attr!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def parse_factory_args(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (numbers, true/false, lists) is used as such."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ExportError(f"--factory-arg {pair!r}: expected KEY=VALUE with KEY a Python identifier")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def _only_tensors(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model", "model_state_dict"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(
            f"{path} is not a state dict of tensors ({type(obj).__name__}); save model.state_dict() with "
            "safetensors.torch.save_file or torch.save"
        )
    return obj


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or from a weights-only ``torch.load``; never unpickles code."""
    if not path.is_file():
        raise ExportError(f"--weights {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExportError(f"--weights {path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ExportError(
            f"--weights {path} needs more than tensors to load ({first_line(exc)}); bnfold never unpickles code: save "
            "model.state_dict() instead, or convert it to safetensors"
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise ExportError(f"--weights {path}: not a readable torch file ({exc})") from exc
    return _only_tensors(obj, path)


def build_model(spec: str, factory_args: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Call the factory, check it made an ``nn.Module``, load the weights strictly; eval mode."""
    try:
        model = import_factory(spec)(**factory_args)
    except ExportError:
        raise
    except Exception as exc:  # the user's factory may raise anything
        raise ExportError(f"--torch {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ExportError(f"--torch {spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ExportError(f"the weights do not match {spec}: {' '.join(lines[1:3] or lines[:1])}") from exc
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3]) or "none"
        unexpected = ", ".join(result.unexpected_keys[:3]) or "none"
        raise ExportError(
            f"the weights do not match {spec}: {len(result.missing_keys)} missing keys (first: {missing}), "
            f"{len(result.unexpected_keys)} unexpected keys (first: {unexpected})"
        )
    return model.eval()


def probe_classes(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Run two zero inputs of ``shape``; the model must return (N, classes) logits."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as exc:  # the model rejects the input however it likes
        raise ExportError(
            f"the model rejects input shape {','.join(map(str, shape))}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExportError(f"the model must return (N, classes) logits for a classifier; it returned {got}")
    return int(out.shape[1])


def accuracy(model: nn.Module, images: ImageSet, batch: int = 64) -> float:
    """Top-1 accuracy of ``model`` on a labelled image set."""
    assert images.y is not None
    with torch.no_grad():
        logits = torch.cat(
            [model(torch.from_numpy(x)) for x in np.array_split(images.x, max(1, len(images.x) // batch))]
        )
    return float((logits.argmax(1).numpy() == images.y).mean())


def recalibrate(model: nn.Module, source: TorchSource, check: ImageSet | None) -> dict[str, Any]:
    """Algorithm 2 over mini-batches of ``--recalibrate``'s images; accuracy before and after when labelled."""
    assert source.recalibrate is not None
    images = load_images(source.recalibrate, source.input_shape, source.mean, source.std, source.preprocessing)
    batches = [torch.from_numpy(b) for b in recalibration_batches(images, source.recalibrate_batch_size)]
    labelled = check if check is not None and check.y is not None else (images if images.y is not None else None)
    before = accuracy(model, labelled) if labelled is not None else None
    try:
        layers = recalibrate_bn(model, batches)
    except ValueError as exc:  # Algorithm 2's preconditions: running statistics, 2+ values per channel
        raise ExportError(f"--recalibrate {images.root}: {exc}") from exc
    model.eval()
    result: dict[str, Any] = {
        "method": METHOD,
        "images": str(images.root),
        "samples": len(images.x),
        "batch_size": source.recalibrate_batch_size,
        "batches": len(batches),
        "layers": layers,
    }
    if labelled is not None:
        after = accuracy(model, labelled)
        result["accuracy"] = {"evaluated_on": str(labelled.root), "own_statistics": before, "recalibrated": after}
        logger.info(
            "accuracy on %s: %.4f with the model's own statistics, %.4f recalibrated", labelled.root, before, after
        )
    return result


def default_name(spec: str) -> str:
    """The factory's name, made a valid model name (``torchvision.models:resnet50`` -> ``resnet50``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", spec.rpartition(":")[2]).strip("-.") or "model"


def job_from_torch(source: TorchSource) -> ExportJob:
    """Build the user's model with its weights (recalibrated if asked) and its data into an export job."""
    model = build_model(source.factory, source.factory_args, load_state_dict(source.weights))
    classes = probe_classes(model, source.input_shape)
    prep = recipe_for(source.input_shape, source.mean, source.std, source.preprocessing)
    images = (
        load_images(source.images, source.input_shape, source.mean, source.std, source.preprocessing)
        if source.images
        else None
    )
    labels = resolve_labels(source.labels_file, classes, images)
    report: dict[str, Any] = {
        "provenance": {"factory": source.factory, "factory_args": source.factory_args, "weights": str(source.weights)}
    }
    if images is not None and images.y is not None:
        report["accuracy"] = {"images": str(images.root), "top1": accuracy(model, images)}
    if source.recalibrate is not None:
        report["recalibration"] = recalibrate(model, source, images)
    normalization = {"mean": source.mean, "std": source.std} if source.mean and source.std else None
    return ExportJob(
        name=default_name(source.factory),
        model=model,
        input_shape=source.input_shape,
        preprocessing=prep,
        labels=labels,
        normalization=normalization,
        samples=images.x if images is not None else None,
        validation_x=images.x if images is not None and images.y is not None else None,
        validation_y=images.y if images is not None else None,
        calibration=images.x if images is not None else None,
        metadata={
            "bnfold.model": {
                "name": default_name(source.factory),
                "factory": source.factory,
                "options": source.factory_args,
            }
        },
        report=report,
    )
