"""Datasets: deterministic splits, train-split normalisation, and clear errors for bad data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import load_dataset
from training.errors import DataError


def test_digits_split_is_deterministic_stratified_and_normalised_on_train() -> None:
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    assert a.train_x.shape[0] + a.val_x.shape[0] == 1797
    assert a.input_shape == (1, 8, 8) and a.labels == [str(i) for i in range(10)]
    assert torch.equal(a.val_y, b.val_y) and torch.equal(a.val_x, b.val_x)
    assert not torch.equal(a.val_y, c.val_y)
    # every class appears in validation in proportion
    counts = torch.bincount(a.val_y, minlength=10)
    assert counts.min() >= 30
    # normalised train split has zero mean and unit std per channel; validation only approximately
    assert abs(float(a.train_x.mean())) < 1e-5
    assert abs(float(a.train_x.std()) - 1) < 1e-3
    assert abs(float(a.val_x.mean())) > 1e-6


def test_synthetic_is_seeded_and_sized() -> None:
    a = load_dataset("synthetic", image_size=20, seed=3, synthetic_samples=60, synthetic_classes=3)
    b = load_dataset("synthetic", image_size=20, seed=3, synthetic_samples=60, synthetic_classes=3)
    assert a.input_shape == (3, 20, 20) and a.labels == ["disc", "square", "triangle"]
    assert torch.equal(a.train_x, b.train_x)


def _write_png(path: Path, value: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (10, 12), value if mode == "L" else (value, 0, 0)).save(path)


def test_imagefolder_loads_classes_and_detects_grey(tmp_path: Path) -> None:
    for i in range(5):
        _write_png(tmp_path / "cat" / f"{i}.png", 30 + i)
        _write_png(tmp_path / "dog" / f"{i}.png", 200 - i)
    ds = load_dataset("imagefolder", data_dir=tmp_path, image_size=6)
    assert ds.labels == ["cat", "dog"]
    assert ds.input_shape == (1, 6, 6)


def test_imagefolder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", data_dir=tmp_path / "missing")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("imagefolder")
    _write_png(tmp_path / "only" / "a.png", 10)
    with pytest.raises(DataError, match=r"1 class folder.*at least 2"):
        load_dataset("imagefolder", data_dir=tmp_path)
    _write_png(tmp_path / "other" / "b.png", 10)
    bad = tmp_path / "other" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DataError, match="valid datasets: digits, imagefolder, mnist, synthetic"):
        load_dataset("cifar10")


def _idx(data: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    return header + data.astype(np.uint8).tobytes()


def test_mnist_reads_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28))
    labels = np.arange(40) % 10
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 2051)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels, 2049))
    ds = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.25)
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_x.shape[0] == 30 and ds.val_x.shape[0] == 10
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels, 2049)[:-3])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", data_dir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="lacks train-images"):
        load_dataset("mnist", data_dir=empty)


def test_batches_follow_a_partial_order_and_drop_the_short_tail() -> None:
    from training.data.batches import iterate_batches

    x = torch.arange(20.0).view(20, 1, 1, 1)
    y = torch.arange(20)
    order = torch.tensor([3, 1, 4, 15, 9, 2, 6])  # a shard: 7 of the 20 samples
    batches = list(iterate_batches(x, y, 3, order, drop_last=True))
    assert [b[1].tolist() for b in batches] == [[3, 1, 4], [15, 9, 2]]
    assert [b[1].tolist() for b in iterate_batches(x, y, 3, order, start=2)] == [[6]]
