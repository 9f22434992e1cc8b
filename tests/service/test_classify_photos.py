"""Real photos reach a model as its training prepared them: ``bnfold-export --resize 256 --crop 224`` records the
recipe, and ``/classify`` replays it on a non-square photo and on an EXIF-rotated JPEG.

The reference is torchvision's ``Resize(256), CenterCrop(224), ToTensor()`` for a PIL image. torchvision cannot
be imported here (its PyPI wheel is built for CUDA), so ``torchvision_reference`` writes that transform out with
PIL, following torchvision's source: the shorter side to 256 and the longer to ``int(256 * long / short)``
(bilinear, which PIL antialiases), an image whose shorter side is already 256 left as it is, crop offsets
``int(round((size - 224) / 2))``, then /255 and HWC -> CHW.
"""

from __future__ import annotations

import asyncio
import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from export.cli import main
from service.images import decode_images
from service.model import load_version
from tests.service.conftest import make_client

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
NET_MODULE = '''
"""A position-sensitive classifier of 224 x 224 RGB photos: a strided conv, then a linear layer over its map."""
from torch import nn


def make() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 16, stride=16), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 14 * 14, 5))
'''


def torchvision_reference(img: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """``Resize(resize), CenterCrop(crop), ToTensor()`` of torchvision, for an RGB PIL image, then normalised."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short != resize:
        new_long = int(resize * long / short)
        img = img.resize((resize, new_long) if w <= h else (new_long, resize), Image.Resampling.BILINEAR)
    top, left = round((img.size[1] - crop) / 2.0), round((img.size[0] - crop) / 2.0)  # torchvision: int(round(...))
    x = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]).astype(
        np.float32
    )


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth photo-like RGB image with some texture (no two rows or columns alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _jpeg(img: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation  # EXIF Orientation
    img.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photonet exported with ``--resize 256 --crop 224`` into a repository."""
    root = tmp_path_factory.mktemp("photos")
    (root / "photonet.py").write_text(textwrap.dedent(NET_MODULE))
    sys.path.insert(0, str(root))
    import photonet

    torch.manual_seed(0)
    save_file(photonet.make().state_dict(), str(root / "net.safetensors"))
    argv = ["--torch", "photonet:make", "--weights", str(root / "net.safetensors"), "--input-shape", "3,224,224"]
    argv += ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--resize", "256", "--crop", "224"]
    assert main([*argv, "--repository", str(root / "repo"), "--name", "photo"]) == 0
    return root / "repo"


def _decoded(repo: Path, data: bytes) -> np.ndarray:
    """What /classify feeds the model for ``data``: the service's decoder for the model loaded from ``repo``."""
    model = load_version(repo / "photo", 1, "cpu", 1)
    return asyncio.run(decode_images([("photo.jpg", data)], model, 10**8))[0]


def test_a_non_square_photo_reaches_the_model_as_torchvision_would_give_it(exported: Path) -> None:
    for size in ((400, 300), (300, 451), (256, 600)):  # landscape, portrait, shorter side already 256
        photo = _photo(*size, seed=size[0])
        data = _jpeg(photo)
        with Image.open(io.BytesIO(data)) as decoded:
            expected = torchvision_reference(decoded.convert("RGB"))
        got = _decoded(exported, data)
        assert got.shape == (3, 224, 224)
        np.testing.assert_array_equal(got, expected)
        with Image.open(io.BytesIO(data)) as decoded:  # today's squash gives another tensor: the test can fail
            squashed = np.asarray(decoded.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        assert not np.allclose(got, (squashed.transpose(2, 0, 1) / 255.0 - 0.45) / 0.225, atol=0.05)


def test_an_exif_rotated_jpeg_is_turned_upright_first(exported: Path) -> None:
    photo = _photo(360, 270, seed=7)  # stored landscape; EXIF orientation 6: shown rotated 90 degrees clockwise
    data = _jpeg(photo, orientation=6)
    with Image.open(io.BytesIO(data)) as decoded:
        upright = decoded.convert("RGB").transpose(Image.Transpose.ROTATE_270)
        sideways = torchvision_reference(decoded.convert("RGB"))
    expected = torchvision_reference(upright)
    got = _decoded(exported, data)
    np.testing.assert_array_equal(got, expected)
    assert not np.allclose(got, sideways, atol=0.05)


def test_classify_answers_as_the_model_does_on_the_reference_tensor(exported: Path) -> None:
    import onnxruntime as ort

    data = _jpeg(_photo(333, 250, seed=3), orientation=8)
    with Image.open(io.BytesIO(data)) as decoded:
        reference = torchvision_reference(decoded.convert("RGB").transpose(Image.Transpose.ROTATE_90))
    session = ort.InferenceSession(str(exported / "photo" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": reference[None]})[0][0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    with make_client(exported) as client:
        r = client.post("/v1/models/photo/classify?top_k=5", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    top = r.json()["predictions"][0]["top"]
    assert [t["index"] for t in top] == list(np.argsort(-probs))
    np.testing.assert_allclose([t["probability"] for t in top], np.sort(probs)[::-1], rtol=1e-4, atol=1e-6)


BAD_RECIPES = {
    "a crop larger than the resize": (
        ["--resize", "200", "--crop", "224"],
        "the crop 224 is larger than the resize 200",
    ),
    "an unknown resize mode": (["--resize-mode", "stretch"], "unknown resize mode 'stretch'; expected one of squash"),
    "a crop that is not the input size": (
        ["--resize", "256", "--crop", "200"],
        "the crop 200 is not the model's input",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_a_bad_recipe_gets_one_line_and_writes_nothing(
    case: str, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, message = BAD_RECIPES[case]
    weights = exported.parent / "net.safetensors"
    argv = ["--torch", "photonet:make", "--weights", str(weights), "--input-shape", "3,224,224", *flags]
    assert main([*argv, "--repository", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err and "left unchanged" in err, err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
