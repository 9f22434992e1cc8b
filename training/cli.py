"""``bnfold-train`` (also ``python -m training``): a thin command line over :func:`run_training`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.config import TrainConfig, load_config
from training.data import DATASET_NAMES
from training.errors import BnfoldError
from training.logs import configure_logging
from training.models import MODEL_NAMES

EPILOG = """\
examples:
  bnfold-train                                   convnet on the bundled digits (the default)
  bnfold-train --model mlp --activation sigmoid  the paper's section 4.1 network
  bnfold-train --model resnet --model-option depth=20 --dataset synthetic --image-size 32
  bnfold-train --config run.toml --lr 0.1        TOML config, flags override it
  bnfold-train --resume runs/default             continue a run from its latest checkpoint
"""


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag defaults to None so that only given flags override the config."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="bnfold-train",
        description="Train a BatchNorm classifier, recalibrate its population statistics, write a checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=None,
    )
    p.add_argument("--config", type=Path, help="TOML file with any of the options below (flags win)")
    _model_flags(p.add_argument_group("model"), d)
    _data_flags(p.add_argument_group("data"), d)
    _optimisation_flags(p.add_argument_group("optimisation"), d)
    _bn_flags(p.add_argument_group("BatchNorm population statistics"), d)
    _output_flags(p.add_argument_group("output"), d)
    p.set_defaults(batch_norm=None, recalibrate=None, plots=None)
    return p


def _model_flags(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--model", choices=MODEL_NAMES, help=f"network to train (default {d.model})")
    g.add_argument(
        "--model-option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="extra constructor option, e.g. depth=20 or widths=[16,32] (repeatable)",
    )
    g.add_argument("--no-batch-norm", dest="batch_norm", action="store_false", help="train without BN")
    g.add_argument("--activation", choices=["relu", "sigmoid"], help="nonlinearity (default: the model's)")


def _data_flags(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--dataset", choices=DATASET_NAMES, help=f"dataset (default {d.dataset})")
    g.add_argument("--data-dir", type=Path, help="folder for imagefolder (one folder per class) or mnist (IDX)")
    g.add_argument("--image-size", type=int, help="square input size (default: the dataset's)")
    g.add_argument("--val-fraction", type=float, help=f"validation share (default {d.val_fraction})")


def _optimisation_flags(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--batch-size", type=int, help=f"mini-batch size m (default {d.batch_size})")
    g.add_argument("--epochs", type=int, help=f"epochs (default {d.epochs})")
    g.add_argument("--steps", type=int, help="optimisation steps (overrides --epochs)")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], help=f"(default {d.optimizer})")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    g.add_argument("--weight-decay", type=float, help=f"(default {d.weight_decay})")
    g.add_argument("--schedule", choices=["cosine", "step", "constant"], help=f"(default {d.schedule})")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 0)")
    g.add_argument("--seed", type=int, help=f"seed for split, init and order (default {d.seed})")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision (fp16 needs CUDA)")
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory layout")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="under torchrun: BatchNorm statistics over every process's batch (SyncBatchNorm)",
    )
    g.add_argument("--dist-timeout-s", type=float, help="bound on every collective under torchrun (default 120)")


def _bn_flags(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--bn-stats", choices=["ema", "cumulative"], help="running-statistics rule (default ema)")
    g.add_argument("--bn-momentum", type=float, help=f"EMA momentum (default {d.bn_momentum}, torch's)")
    g.add_argument(
        "--no-recalibrate",
        dest="recalibrate",
        action="store_false",
        help="keep the running averages instead of Algorithm 2's population statistics",
    )
    g.add_argument("--recalibrate-batches", type=int, help="mini-batches for Algorithm 2 (default: one epoch)")


def _output_flags(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--out", type=Path, help=f"run directory (default {d.out})")
    g.add_argument("--resume", type=Path, help="continue from a run directory or checkpoint")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace a previous run in --out")
    g.add_argument("--stop-after-steps", type=int, help="stop early at this step, leaving a resumable checkpoint")
    g.add_argument("--keep-checkpoints", type=int, help=f"checkpoints kept (default {d.keep_checkpoints})")
    g.add_argument("--log-every", type=int, help=f"steps between metric records (default {d.log_every})")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG curves")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a tty)")
    g.add_argument("--dry-run", action="store_true", default=None, help="one step and one eval batch; no files")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, configure logging, train; expected errors become one line and exit code 2."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "verbose")}
    if "model_option" in given:
        given["model_options"] = dict(given.pop("model_option"))
    if args.resume is not None and "out" not in given:
        given["out"] = _run_dir_of(args.resume)
    try:
        from training.pipeline import run_training

        config = load_config(args.config, given)
        result = run_training(config)
    except BnfoldError as exc:
        print(f"bnfold-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnfold-train: interrupted; the last completed checkpoint is intact", file=sys.stderr)
        return 130
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if result.main:  # the other ranks of a distributed run do not evaluate
        print(f"validation accuracy: {result.val_acc:.4f}  ({result.seconds:.1f} s)")
    return 0


def _run_dir_of(resume: Path) -> Path:
    """The run directory a --resume path belongs to (so a resumed run appends to the same metrics)."""
    resume = Path(resume)
    if (resume / "checkpoints").is_dir():
        return resume
    for parent in (resume, *resume.resolve().parents):
        if parent.name == "checkpoints":
            return parent.parent
    return resume


if __name__ == "__main__":
    sys.exit(main())
