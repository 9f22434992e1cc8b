"""The in-memory dataset every loader produces, its deterministic split and its normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contracts.images import normalise
from training.errors import DataError


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std``, computed on the training split and stored with the checkpoint."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: torch.Tensor) -> Normalization:
        """Per-channel mean and standard deviation of ``x`` (N, C, H, W) in float64."""
        x64 = x.to(torch.float64)
        mean = x64.mean(dim=(0, 2, 3))
        std = x64.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    def apply(self, x: np.ndarray) -> torch.Tensor:
        """Normalise ``x`` (N, C, H, W) channel by channel, as serving will (:func:`contracts.images.normalise`)."""
        return torch.from_numpy(normalise(x, self.mean, self.std))


@dataclass
class Dataset:
    """A normalised train/validation split held in memory as float32 NCHW tensors."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    labels: list[str]
    normalization: Normalization

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a deterministic stratified train/validation split (each class split on its own)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def finish_dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    val_fraction: float,
    seed: int,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Split (unless ``val`` is given), fit the normalisation on the training part and apply it.

    ``x`` is float in [0, 1] shaped (N, C, H, W); ``y`` holds integer class indices.
    """
    if val is None:
        tr, va = stratified_split(y, val_fraction, seed)
        train_x, train_y, val_x, val_y = x[tr], y[tr], x[va], y[va]
    else:
        train_x, train_y, (val_x, val_y) = x, y, val
    tx = np.ascontiguousarray(train_x, dtype=np.float32)
    norm = Normalization.fit(torch.from_numpy(tx))
    return Dataset(
        name=name,
        train_x=norm.apply(tx),
        train_y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
        val_x=norm.apply(val_x),
        val_y=torch.from_numpy(np.asarray(val_y, dtype=np.int64)),
        labels=labels,
        normalization=norm,
    )


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize a (N, C, H, W) float array to ``size`` x ``size`` (no-op when it already is)."""
    if x.shape[-2:] == (size, size):
        return x
    t = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return t.numpy()
