"""The image contract: the same PNG becomes the same tensor, bit for bit, in training, export and serving,
each reached through its own entry point (a training dataset, export's ``--images`` reader, the service's
decoder for a model loaded from a repository)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from contracts.images import ImageError, ImageSpec, ImageTooLarge, preprocess

SIZE = 8


def _png(path: Path, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    shape = (11, 13, 3) if mode == "RGB" else (11, 13)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for c, cls in enumerate(("cat", "dog")):
        for i in range(5):
            _png(root / cls / f"{i}.png", 10 * c + i)
    return root


def _training_row(folder: Path, png: Path) -> tuple[np.ndarray, tuple[list[float], list[float]]]:
    """``png``'s row of the training split, as ``bnfold-train --dataset imagefolder`` loads it."""
    from training.data.base import stratified_split
    from training.data.registry import load_dataset

    ds = load_dataset("imagefolder", data_dir=folder, image_size=SIZE, seed=0)
    files = sorted(folder.glob("*/*.png"))
    y = np.array([0 if f.parent.name == "cat" else 1 for f in files])
    train_idx, _ = stratified_split(y, 0.2, 0)
    row = list(train_idx).index(files.index(png))
    norm = ds.normalization
    return ds.train_x[row].numpy(), (list(norm.mean), list(norm.std))


def _served_model(repository: Path, mean: list[float], std: list[float]) -> object:
    """A model written by export's repository writer and loaded by the service, normalisation in its metadata."""
    from export.repository.writer import write_model
    from service.model import load_version

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    norm = {"mean": mean, "std": std}
    helper.set_model_props(model, {"bnfold.input": json.dumps({"normalization": norm})})
    path = repository.parent / "m.onnx"
    onnx.save(model, path)
    write_model(repository, "m", path, ["a", "b", "c"])
    return load_version(repository / "m", 1, "cpu", 1)


def test_same_png_same_tensor_in_training_export_and_serving(folder: Path, tmp_path: Path) -> None:
    from export.sources.images import load_images
    from service.images import decode_images

    png = folder / "dog" / "3.png"
    trained, (mean, std) = _training_row(folder, png)
    exported = load_images(folder, (3, SIZE, SIZE), mean, std).x[sorted(folder.glob("*/*.png")).index(png)]
    model = _served_model(tmp_path / "repo", mean, std)
    served = asyncio.run(decode_images([("3.png", png.read_bytes())], model, 10**6))[0]  # type: ignore[arg-type]
    assert trained.dtype == exported.dtype == served.dtype == np.float32
    assert trained.shape == exported.shape == served.shape == (3, SIZE, SIZE)
    assert trained.tobytes() == exported.tobytes() == served.tobytes()
    assert np.abs(trained).max() > 0.5  # normalised pixels, not an empty tensor


def test_spec_converts_resizes_and_normalises(tmp_path: Path) -> None:
    _png(tmp_path / "g.png", 1, mode="L")
    grey = preprocess(tmp_path / "g.png", ImageSpec(1, 4, 6))
    assert grey.shape == (1, 4, 6) and grey.min() >= 0.0 and grey.max() <= 1.0
    rgb = preprocess(tmp_path / "g.png", ImageSpec(3, 4, 6, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert rgb.shape == (3, 4, 6)
    np.testing.assert_array_equal(rgb[0], ((grey[0] - np.float32(0.5)) / np.float32(0.25)).astype(np.float32))


def test_bad_images_and_specs_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"^x\.png is not a PNG or JPEG image$"):
        preprocess(b"not an image", ImageSpec(1, 2, 2), name="x.png", formats=("PNG", "JPEG"))
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(noise, mode="L").save(buf, format="PNG")
    with pytest.raises(ImageTooLarge, match=r"^big\.png: 40x30 pixels exceeds the limit of 1000 pixels$"):
        preprocess(buf.getvalue(), ImageSpec(1, 2, 2), name="big.png", max_pixels=1000)
    with pytest.raises(ImageError, match=r"is not a readable PNG or JPEG image \("):
        cut = buf.getvalue()[: len(buf.getvalue()) // 2]
        preprocess(cut, ImageSpec(1, 2, 2), name="cut.png", formats=("PNG", "JPEG"))
    with pytest.raises(ValueError, match="std needs 3 values"):
        ImageSpec(3, 2, 2, std=(1.0,))
    with pytest.raises(ValueError, match="1 or 3 channels, got 2"):
        ImageSpec.from_shape((2, 4, 4))
