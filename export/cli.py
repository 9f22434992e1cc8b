"""``bnfold-export`` (also ``python -m export``): a model -> verified ONNX with no BatchNorm -> model repository.

Three sources, one pipeline (``export.pipeline``): a bnfold checkpoint (``--checkpoint``), any PyTorch model
(``--torch PACKAGE.MODULE:FACTORY --weights FILE --input-shape C,H,W``) or any ONNX file (``--onnx``, which
imports no torch).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import BnfoldError
from training.logs import configure_logging

if TYPE_CHECKING:
    from contracts.preprocessing import Preprocessing
    from export.job import ExportJob

QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "torch._export")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W (positive integers), got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"expected C,H,W (positive integers), got {text!r}")
    return shape


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _image_flags(p: argparse.ArgumentParser) -> None:
    """The image preprocessing flags (recorded in the model's metadata, applied by /classify)."""
    i = p.add_argument_group(
        "image preprocessing the model was trained with (--torch, --onnx; recorded, and applied by /classify)"
    )
    i.add_argument("--resize", type=int, metavar="N", help="shorter side to N, then the centre H x W (e.g. 256)")
    i.add_argument("--crop", type=int, metavar="N", help="the centre crop's side: the model's H and W (e.g. 224)")
    i.add_argument("--resize-mode", help="squash | shorter-side-crop (default: shorter-side-crop with --resize)")
    i.add_argument(
        "--interpolation", default="bilinear", help="nearest | bilinear | bicubic | lanczos (default bilinear)"
    )
    i.add_argument("--exif", default="apply", help="apply | ignore a photo's EXIF orientation (default apply)")
    i.add_argument("--channel-order", default="RGB", help="RGB | BGR (default RGB)")
    i.add_argument("--layout", default="NCHW", help="NCHW | NHWC: the model's input layout (default NCHW)")
    i.add_argument("--formats", default="PNG,JPEG,WEBP", help="image formats accepted (default PNG,JPEG,WEBP)")


def _repository_flags(p: argparse.ArgumentParser) -> None:
    """Where and how the verified graph is written: repository, name, batching, variant, padded-BN fold."""
    r = p.add_argument_group("repository")
    r.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository root")
    r.add_argument("--name", help="model name in the repository (default from the source)")
    r.add_argument("--max-batch-size", type=int, default=64, help="config.pbtxt max_batch_size (default 64)")
    r.add_argument("--max-queue-delay-us", type=int, default=500, help="dynamic batching delay (default 500)")
    variant = r.add_mutually_exclusive_group()
    variant.add_argument("--fp16", action="store_true", help="export the half-precision variant as <name>-fp16")
    variant.add_argument("--int8", action="store_true", help="export the int8 variant as <name>-int8 (QDQ, gated)")
    r.add_argument(
        "--calibration-method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="int8 calibration (default minmax)",
    )
    r.add_argument("--data-dir", type=Path, help="where the checkpoint's dataset lives now, if it moved")
    r.add_argument(
        "--padded-bn",
        default="add",
        help="BN before a zero-padded conv: add (its shift as one Add before the conv; default) or bias-map (a "
        "constant map after it, for the fixed input size)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bnfold-export",
        description="Fold every BatchNorm of a model into its weights, export ONNX, verify it against a float64 run "
        "of the original and add it as a new version to a Triton-layout model repository. One pipeline for every "
        "source and variant: fold -> float64 reference -> write the staged version -> verify -> commit. --onnx "
        "needs no torch (pip install 'bnfold[onnx]').",
        epilog="examples:\n  bnfold-export --checkpoint runs/demo --repository model_repository --name digits\n"
        "  bnfold-export --torch torchvision.models:resnet50 --weights resnet50.safetensors --input-shape 3,224,224\n"
        "  bnfold-export --onnx model.onnx --images val/ --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (exactly one)").add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a bnfold run directory or checkpoint directory")
    src.add_argument("--torch", metavar="PACKAGE.MODULE:FACTORY", help="a factory that returns the nn.Module")
    src.add_argument("--onnx", type=Path, metavar="FILE", help="an ONNX file from any exporter (no torch needed)")
    t = p.add_argument_group("models from elsewhere (--torch, --onnx)")
    t.add_argument("--factory-arg", action="append", default=[], metavar="KEY=VALUE", help="factory keyword (JSON)")
    t.add_argument("--weights", type=Path, help="safetensors, or a state dict saved with torch.save (--torch)")
    t.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="one input's shape (--torch)")
    t.add_argument("--labels", type=Path, metavar="FILE", help="class labels, one per line, in output order")
    t.add_argument("--mean", type=_floats, help="per-channel input mean the model expects, e.g. 0.485,0.456,0.406")
    t.add_argument("--std", type=_floats, help="per-channel input std the model expects, e.g. 0.229,0.224,0.225")
    t.add_argument("--images", type=Path, metavar="DIR", help="real inputs: <DIR>/<class>/<image> (or flat)")
    t.add_argument("--recalibrate", type=Path, metavar="DIR", help="recompute BN statistics by Algorithm 2")
    t.add_argument("--recalibrate-batch-size", type=int, default=32, help="mini-batch size m for it (default 32)")
    _image_flags(p)
    _repository_flags(p)
    p.add_argument("--json", action="store_true", help="print the export report as JSON instead of tables")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _preprocessing(args: argparse.Namespace) -> Preprocessing:
    """The recipe the image flags name; ExportError (one line) for an unknown value or a crop over the resize."""
    from contracts.preprocessing import Preprocessing
    from export.errors import ExportError

    if args.exif not in ("apply", "ignore"):
        raise ExportError(f"--exif {args.exif!r}: expected apply or ignore")
    mode = args.resize_mode or ("shorter-side-crop" if args.resize is not None else "squash")
    formats = tuple(f.strip().upper() for f in args.formats.split(",") if f.strip())
    try:
        return Preprocessing(
            mode, args.resize, args.crop, args.interpolation, args.exif == "apply", args.channel_order.upper(),
            args.layout.upper(), formats,
        )  # fmt: skip
    except ValueError as exc:
        raise ExportError(f"image preprocessing: {exc}") from exc


def _job(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ExportJob:
    """The export job for whichever source was named (imports torch and onnx only once they are needed)."""
    if args.checkpoint is not None:
        from export.sources.checkpoint import job_from_checkpoint

        if args.resize is not None or args.crop is not None or args.resize_mode is not None:
            parser.error("--resize, --crop and --resize-mode are for --torch and --onnx; a checkpoint keeps its own")
        return job_from_checkpoint(args.checkpoint, args.data_dir)
    prep = _preprocessing(args)
    if args.torch is not None:
        if args.weights is None or args.input_shape is None:
            parser.error("--torch needs --weights FILE and --input-shape C,H,W")
        from export.sources.torch_factory import TorchSource, job_from_torch, parse_factory_args

        return job_from_torch(
            TorchSource(
                args.torch,
                args.weights,
                args.input_shape,
                parse_factory_args(args.factory_arg),
                args.labels,
                args.mean,
                args.std,
                args.images,
                args.recalibrate,
                args.recalibrate_batch_size,
                prep,
            )
        )
    from export.sources.onnx_file import OnnxSource, job_from_onnx

    return job_from_onnx(
        OnnxSource(
            args.onnx,
            args.labels,
            args.mean,
            args.std,
            args.images,
            args.recalibrate,
            args.recalibrate_batch_size,
            prep,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export internals, not the user's concern
    try:
        job = _job(args, parser)  # a torch source imports torch here, whose logging set-up resets its loggers
        from export.pipeline import export_job

        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.ERROR)
        job.padded_bn = args.padded_bn
        written = export_job(
            job,
            args.repository,
            args.name,
            precision="float16" if args.fp16 else "int8" if args.int8 else "float32",
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            calibration_method=args.calibration_method,
        )
    except BnfoldError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"bnfold-export: error: {message} (the model repository was left unchanged)", file=sys.stderr)
        return 2
    report = written.report
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.fold.table())
        print()
        print(f"verification ({report.precision}; {report.tolerance.to_dict()['rule']}):")
        print(report.verification_table())
        print()
        for warning in report.warnings:
            print(f"note: {warning}")
        if written.int8 is not None:
            print(written.int8.gate_line())
            print()
    ops = written.int8.nodes if written.int8 is not None else report.nodes  # the graph that was written
    nodes, bn = sum(ops.values()), ops.get("BatchNormalization", 0)
    print(
        f"wrote {written.path / 'model.onnx'} (version {written.version}, {nodes} ONNX nodes, {bn} BatchNormalization)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
