"""``bnfold-export --onnx FILE --recalibrate DIR``: Algorithm 2 inside an ONNX graph, held to the torch path's.

A small conv net is trained on the digits (PNG files in class folders), its BN statistics are then broken on
purpose, and the broken model is exported to ONNX. Recalibrating the ONNX file must recover the original's
accuracy, give the statistics ``training.population.recalibrate_bn`` gives on the same model and mini-batches
(within float32 accumulation error), and serve the same answers as ``--torch ... --recalibrate``.
"""

from __future__ import annotations

import copy
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from safetensors.torch import save_file

from export.cli import main
from export.emit.from_torch import emit_onnx
from export.recalibration.training_form import training_form
from export.sources.images import load_images
from export.sources.onnx_file import OnnxSource, job_from_onnx
from export.sources.torch_factory import TorchSource, job_from_torch
from export.verification.checks import ort_session
from training.population import recalibrate_bn

NET_MODULE = '''
"""A user's conv net: Conv -> BN -> ReLU twice, then a linear classifier."""
from torch import nn


def make(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    )
'''
SHAPE = (1, 8, 8)
BATCH = 32


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for step in range(150):
        index = torch.randint(0, len(xs), (64,), generator=torch.Generator().manual_seed(step))
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xs[index]), ys[index]).backward()
        optimiser.step()


def _legacy_onnx(model: torch.nn.Module, x: np.ndarray, path: Path, mode: torch.onnx.TrainingMode) -> None:
    """torch's TorchScript exporter without constant folding: BatchNormalization stays a node (torch's dynamo
    exporter folds it into the conv itself), in inference mode or, with TRAINING, in training mode."""
    torch.onnx.export(
        copy.deepcopy(model),
        (torch.from_numpy(x),),
        str(path),
        dynamo=False,
        do_constant_folding=False,
        training=mode,
        input_names=["input"],
        output_names=["logits"],
        opset_version=15,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Digits as PNGs; a trained net (good statistics), then the same net with its statistics broken, as
    safetensors and as an ONNX file from torch's exporter."""
    root = tmp_path_factory.mktemp("recalibrate")
    (root / "recalnets.py").write_text(textwrap.dedent(NET_MODULE))
    sys.path.insert(0, str(root))
    import recalnets
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(600):
        folder = root / "images" / str(int(digits.target[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(digits.images[i] / 16 * 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    images = load_images(root / "images", SHAPE)
    assert images.y is not None
    torch.manual_seed(0)
    model = recalnets.make(8)
    _train(model, images.x, images.y)
    recalibrate_bn(model, torch.from_numpy(images.x).split(BATCH))
    good = _accuracy(model, images.x, images.y)
    for name, buffer in model.named_buffers():  # wrong statistics, as after fine-tuning with tiny batches
        if name.endswith("running_mean"):
            buffer.add_(torch.linspace(-1.5, 1.5, len(buffer)))
        elif name.endswith("running_var"):
            buffer.mul_(torch.linspace(0.05, 6.0, len(buffer)))
    bad = _accuracy(model, images.x, images.y)
    save_file(model.state_dict(), str(root / "broken.safetensors"))
    _legacy_onnx(model, images.x[:2], root / "broken.onnx", torch.onnx.TrainingMode.EVAL)
    _legacy_onnx(model, images.x[:2], root / "training.onnx", torch.onnx.TrainingMode.TRAINING)
    return {"root": root, "model": model, "images": images, "good": good, "bad": bad}


def test_the_broken_file_recovers_the_originals_accuracy_and_the_torch_paths_statistics(
    broken: dict[str, object],
) -> None:
    root = broken["root"]
    assert isinstance(root, Path) and isinstance(broken["good"], float) and isinstance(broken["bad"], float)
    assert broken["good"] > 0.8 and broken["bad"] < broken["good"] - 0.2  # the statistics are really broken
    images = root / "images"
    onnx_job = job_from_onnx(
        OnnxSource(root / "broken.onnx", images=images, recalibrate=images, recalibrate_batch_size=BATCH)
    )
    torch_job = job_from_torch(
        TorchSource(
            "recalnets:make",
            root / "broken.safetensors",
            SHAPE,
            {"width": 8},
            images=images,
            recalibrate=images,
            recalibrate_batch_size=BATCH,
        )
    )
    accuracy = onnx_job.report["recalibration"]["accuracy"]
    assert accuracy["own_statistics"] == pytest.approx(broken["bad"], abs=1e-9)
    assert accuracy["recalibrated"] >= broken["good"] - 0.01
    assert accuracy["recalibrated"] == torch_job.report["recalibration"]["accuracy"]["recalibrated"]
    assert isinstance(onnx_job.model, onnx.ModelProto) and isinstance(torch_job.model, torch.nn.Module)
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx_job.model.graph.initializer}
    bns = [n for n in onnx_job.model.graph.node if n.op_type == "BatchNormalization"]
    torch_bns = [m for m in torch_job.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(torch_bns) == 2
    for node, module in zip(bns, torch_bns, strict=True):
        assert module.running_mean is not None and module.running_var is not None
        np.testing.assert_allclose(initializers[node.input[3]], module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(initializers[node.input[4]], module.running_var.numpy(), rtol=1e-5, atol=1e-7)


def _served(repo: Path, name: str, x: np.ndarray) -> np.ndarray:
    """What bnfold-serve computes: the written model.onnx at ORT_ENABLE_ALL."""
    session = ort_session(repo / name / "1" / "model.onnx", "enable_all")
    return np.asarray(session.run(["logits"], {"input": x})[0])


@pytest.mark.slow
def test_onnx_and_torch_recalibration_serve_the_same_answers(broken: dict[str, object], tmp_path: Path) -> None:
    root = broken["root"]
    assert isinstance(root, Path)
    common = [
        "--recalibrate",
        str(root / "images"),
        "--recalibrate-batch-size",
        str(BATCH),
        "--repository",
        str(tmp_path),
    ]
    assert main(["--onnx", str(root / "broken.onnx"), "--name", "from-onnx", *common]) == 0
    torch_args = ["--torch", "recalnets:make", "--weights", str(root / "broken.safetensors"), "--input-shape", "1,8,8"]
    assert main([*torch_args, "--name", "from-torch", *common]) == 0
    x = load_images(root / "images", SHAPE).x
    from_onnx, from_torch = _served(tmp_path, "from-onnx", x), _served(tmp_path, "from-torch", x)
    np.testing.assert_allclose(from_onnx, from_torch, rtol=1e-4, atol=1e-4)
    assert (from_onnx.argmax(1) == from_torch.argmax(1)).mean() >= 0.995  # only near ties may differ


def test_the_training_form_normalises_with_each_batchs_own_statistics(broken: dict[str, object]) -> None:
    """The instrumented graph computes what torch's BN computes in training mode, and exposes mu_B, sigma_B^2."""
    root, model, images = broken["root"], broken["model"], broken["images"]
    assert isinstance(root, Path) and isinstance(model, torch.nn.Sequential)
    form, observed = training_form(onnx.load(str(root / "broken.onnx")))
    session = ort_session(form.SerializeToString(), "disable_all")
    x = images.x[:BATCH]  # type: ignore[attr-defined]
    names = ["logits", *(n for o in observed for n in (o.mean, o.var, o.shape))]
    logits, *stats = session.run(names, {"input": x})
    training_net = copy.deepcopy(model).eval()
    captured: list[torch.Tensor] = []
    for module in training_net:
        if isinstance(module, torch.nn.BatchNorm2d):
            module.train()  # normalises with the batch's statistics (the copy's buffers may move)
            module.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        expected = training_net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    for i, inputs in enumerate(captured):
        xd = inputs.double()
        np.testing.assert_allclose(stats[3 * i], xd.mean(dim=(0, 2, 3)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[3 * i + 1], xd.var(dim=(0, 2, 3), correction=0).numpy(), rtol=1e-5, atol=1e-7)
        assert list(stats[3 * i + 2]) == list(inputs.shape)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_bn_in_training_mode_is_refused_without_recalibrate_and_folded_with_it(
    broken: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = broken["root"]
    assert isinstance(root, Path)
    training = onnx.load(str(root / "training.onnx"))
    modes = [
        a.i
        for n in training.graph.node
        if n.op_type == "BatchNormalization"
        for a in n.attribute
        if a.name == "training_mode"
    ]
    assert modes == [1, 1]  # torch's exporter really wrote BN in training mode
    argv = ["--onnx", str(root / "training.onnx"), "--repository", str(tmp_path / "repo"), "--name", "trained"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "training_mode=1" in err and "--recalibrate DIR" in err, err
    assert not (tmp_path / "repo").exists() or _listing(tmp_path / "repo") == []
    images = str(root / "images")
    assert main([*argv, "--recalibrate", images, "--recalibrate-batch-size", str(BATCH), "--images", images]) == 0
    out = capsys.readouterr().out
    assert "0 BatchNormalization" in out and "folded-into-preceding" in out
    report = json.loads((tmp_path / "repo" / "trained" / "1" / "export_report.json").read_text())
    assert report["recalibration"]["batches"] == 19 and report["onnx_ops"].get("BatchNormalization", 0) == 0
    assert report["verification"] and all(check["passed"] for check in report["verification"])
    assert report["recalibration"]["accuracy"]["recalibrated"] >= broken["good"] - 0.01  # type: ignore[operator]


def _subgraph_bn(path: Path) -> None:
    """A BN inside an If branch: its input cannot be observed from the main graph."""
    text = """<ir_version: 8, opset_import: ["" : 15]>
    g (float[N, 1, 8, 8] input) => (float[N, 1, 8, 8] logits) {
        flag = Constant <value = bool {1}> ()
        logits = If (flag) <
            then_branch = t () => (float[N, 1, 8, 8] y) {
                y = BatchNormalization (input, g, b, m, v)
            },
            else_branch = e () => (float[N, 1, 8, 8] z) { z = Identity (input) }
        >
    }"""
    proto = onnx.parser.parse_model(text)
    for name, value in {"g": 1.0, "b": 0.0, "m": 0.0, "v": 1.0}.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.full(1, value, np.float32), name))
    onnx.save(proto, str(path))


BAD_INPUTS = {
    "too few images for one batch": (["--recalibrate-batch-size", "1000"], "holds 600 images, fewer than one"),
    "batch size below 2": (["--recalibrate-batch-size", "1"], "must be at least 2, got 1"),
    "images that do not fit the input": (["--onnx", "rgba.onnx"], "and 1 or 3 channels; it takes (4, 8, 8)"),
    "a BN whose input cannot be observed": (["--onnx", "subgraph.onnx"], "inside a subgraph, where its input"),
    "a graph with no BN left": (["--onnx", "folded.onnx"], "no BatchNormalization node"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_recalibration_input_gets_one_line_and_writes_nothing(
    case: str, broken: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = broken["root"]
    assert isinstance(root, Path)
    folded = onnx.load(str(root / "broken.onnx"))
    plain = emit_onnx(broken["model"], (torch.zeros(2, *SHAPE),), ("input", "logits"), None)  # type: ignore[arg-type]
    onnx.save(plain, str(tmp_path / "folded.onnx"))
    _subgraph_bn(tmp_path / "subgraph.onnx")
    folded.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    onnx.save(folded, str(tmp_path / "rgba.onnx"))
    repo = tmp_path / "repo"
    (repo / "old" / "1").mkdir(parents=True)
    (repo / "old" / "1" / "model.onnx").write_bytes(b"old")
    before = _listing(repo)
    overrides, message = BAD_INPUTS[case]
    args = {"--onnx": str(root / "broken.onnx"), "--recalibrate": str(root / "images"), "--repository": str(repo)}
    args.update(dict(zip(overrides[::2], overrides[1::2], strict=True)))
    if not Path(args["--onnx"]).is_absolute():
        args["--onnx"] = str(tmp_path / args["--onnx"])
    assert main([x for kv in args.items() for x in kv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err and "left unchanged" in err, err
    assert _listing(repo) == before
